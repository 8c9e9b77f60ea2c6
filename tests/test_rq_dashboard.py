"""The RQ dashboard at /rq: the operator account's admins only, and no side
effect reachable by a link."""

from tests.conftest import login


def test_anonymous_gets_login_page(client):
    response = client.get("/rq/")

    assert response.status_code == 302
    assert "/login" in response.headers["Location"]


def test_manager_and_rep_get_403(app, users):
    for role in ("manager", "rep"):
        client = app.test_client()
        login(client, users[role][1])
        assert client.get("/rq/").status_code == 403, role
        assert client.get("/rq/0/data/queues.json").status_code == 403, role


def test_admin_sees_queues(app, users):
    client = app.test_client()
    login(client, users["admin"][1])

    page = client.get("/rq/")
    data = client.get("/rq/0/data/queues.json")

    assert page.status_code == 200
    assert "RQ" in page.text
    assert data.status_code == 200
    names = [queue["name"] for queue in data.get_json()["queues"]]
    assert any(name.endswith("-deliveries") for name in names) or names == []


def test_requeue_by_get_is_refused(app, users):
    client = app.test_client()
    login(client, users["admin"][1])

    assert client.get("/rq/requeue/default").status_code == 405


def test_cross_site_post_is_refused(app, users):
    client = app.test_client()
    login(client, users["admin"][1])

    response = client.post(
        "/rq/queue/default/failed/empty", headers={"Origin": "https://evil.test"}
    )

    assert response.status_code == 403


def test_missing_job_is_404(app, users):
    client = app.test_client()
    login(client, users["admin"][1])

    response = client.get("/rq/0/view/job/no-such-job")

    assert response.status_code == 404
    assert "Job not found" in response.text


def admin_of_second_account(app):
    from tests.conftest import make_user

    with app.app_context():
        user = make_user("admin", account_name="Globex")
        return user.email, user.account_id


def test_admin_of_second_account_gets_403(app, users):
    """The queues show every account's jobs, so only the operator account's admins see them."""
    email, _ = admin_of_second_account(app)
    client = app.test_client()
    login(client, email)

    page = client.get("/rq/")
    data = client.get("/rq/0/data/queues.json")
    home = client.get("/")

    assert page.status_code == 403
    assert "Queues are for the operator" in page.text
    assert data.status_code == 403
    assert 'href="/rq/"' not in home.text
    assert "Users" in home.text


def test_operator_account_setting_chooses_admins(app, users):
    email, account_id = admin_of_second_account(app)
    app.config["PDAUTO_OPERATOR_ACCOUNT_ID"] = account_id
    second = app.test_client()
    login(second, email)
    first = app.test_client()
    login(first, users["admin"][1])

    assert second.get("/rq/").status_code == 200
    assert 'href="/rq/"' in second.get("/").text
    assert first.get("/rq/").status_code == 403
    assert 'href="/rq/"' not in first.get("/").text
