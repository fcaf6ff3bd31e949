"""schemathesis hooks for .ci/schemathesis: realistic values where the daemon checks a request
against the world rather than its shape. A schema cannot say "an account that exists" or "a day
after today"; without these, every valid request generated for those fields would name a record
that does not exist or a day in the past, and be refused (422) for that.

Only requests generated as valid are touched, and only in fields whose generated value is of
the documented type, so a request generated as invalid stays invalid. Every check runs on every
request; `filter_failure` below drops two kinds of failure where they report the documented
contract, each with its reason.
"""

import datetime
import os

import schemathesis

ACCOUNT = os.environ["TW_ACCOUNT"]
USER = os.environ["TW_USER"]


def _positive(case):
    meta = getattr(case, "meta", None)
    return meta is not None and meta.generation.mode.is_positive


def _future(value):
    """A day in the same notation as `value`, a week from today (UTC)."""
    day = datetime.datetime.now(datetime.timezone.utc).date() + datetime.timedelta(days=7)
    if isinstance(value, str) and "/" in value:
        return day.strftime("%d/%m/%Y")
    return day.isoformat()


def _today(value):
    day = datetime.datetime.now(datetime.timezone.utc).date()
    if isinstance(value, str) and "/" in value:
        return day.strftime("%d/%m/%Y")
    return day.isoformat()


@schemathesis.hook
def before_call(context, case, kwargs):
    if not _positive(case):
        return
    path, method = case.operation.path, case.operation.method.upper()
    body = case.body if isinstance(case.body, dict) else None
    if body is not None:
        # The operator issues in an account it names; tokens are issued for a user of it.
        if path == "/v1/tokens" and method == "POST":
            if body.get("account_id") is None or isinstance(body.get("account_id"), str):
                body["account_id"] = ACCOUNT
            if isinstance(body.get("user_id"), str):
                body["user_id"] = USER
        # An expiry date lies after today.
        if isinstance(body.get("expires_on"), str):
            body["expires_on"] = _future(body["expires_on"])
    query = case.query if isinstance(case.query, dict) else None
    if query is not None:
        if path == "/token/create" and isinstance(query.get("AccountId"), str):
            query["AccountId"] = ACCOUNT
        elif path == "/token/create":
            query["AccountId"] = ACCOUNT
        # A statistics range ends today at the latest and starts no later than it ends.
        if path in ("/v1/stats", "/v1/stats.csv"):
            for key in ("from", "to"):
                if isinstance(query.get(key), str) and query[key].strip():
                    query[key] = _today(query[key])
        # A job's period has the job's own shape; the default is the period due now.
        if path == "/v1/jobs/{job}/run":
            query.pop("period", None)


@schemathesis.hook
def filter_failure(context, failure, case, response):
    """Two checks meet the product's contract rather than a fault; each is dropped only where
    the contract says so, and everywhere else it runs as usual."""
    # Forward auth answers every HTTP method, not only the eight an OpenAPI 3.1 path item can
    # name: a proxy passes the client's method on (Envoy's ext_authz does; WebDAV clients send
    # PROPFIND), and refusing one would refuse the client's request. `unsupported_method` sends
    # QUERY and expects 405, which this route deliberately never answers.
    if failure.code == "ST204" and "/v1/auth" in str(failure.operation):
        return False
    # A revoked token and a deleted user stay listed, for the record (README: "stays listed for
    # audit", "it stays listed as deleted"): reading one after its DELETE answers 200 with its
    # `revoked` / `deleted` status, which `use_after_free` takes for a resource still there.
    if failure.code == "ST301" and str(getattr(failure, "free", "")).startswith(
        ("DELETE /v1/tokens/", "DELETE /v1/users/", "DELETE /token/")
    ):
        return False
    return True
