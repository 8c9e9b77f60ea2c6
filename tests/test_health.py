"""Check /healthz: 200 when the database and Redis respond, 503 naming the part that failed."""

from pdauto import create_app
from tests.support.redis_server import free_port


def test_healthy(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


def test_no_login_needed(client):
    assert client.get("/healthz").status_code == 200


def test_redis_down_names_redis(client, redis_server):
    redis_server.stop()
    try:
        response = client.get("/healthz")
    finally:
        redis_server.start()

    assert response.status_code == 503
    assert response.json == {"status": "failed", "checks": {"database": "ok", "redis": "failed"}}


def test_database_down_names_database(redis_server):
    closed_port = free_port()
    app = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": f"postgresql://pdauto@127.0.0.1:{closed_port}/pdauto",
            "SQLALCHEMY_ENGINE_OPTIONS": {"connect_args": {"connect_timeout": 2}},
            "REDIS_URL": redis_server.url,
        }
    )

    response = app.test_client().get("/healthz")

    assert response.status_code == 503
    assert response.json == {"status": "failed", "checks": {"database": "failed", "redis": "ok"}}
