"""Run a real pdauto RQ worker, with its scheduler, for the browser tests.

Usage: python -m tests.browser.worker_process CONFIG_JSON_PATH

The JSON file contains the settings of the test's app, so the worker reads the
same database and Redis queues as the web server. The process runs until it
receives SIGTERM, which RQ handles as a warm shutdown.
"""

import json
import sys

from pdauto import create_app
from pdauto.worker import make_worker


def main(config_path):
    with open(config_path, encoding="utf-8") as config_file:
        config = json.load(config_file)
    app = create_app(config)
    make_worker(app, name=config.get("PDAUTO_TEST_WORKER_NAME")).work(with_scheduler=True)


if __name__ == "__main__":
    main(sys.argv[1])
