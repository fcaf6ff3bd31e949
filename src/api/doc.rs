//! What the derived OpenAPI document cannot say by itself, added once at start: the configured
//! limits (`tokens.max_lifetime_seconds`, …), the seeds' aliases of body fields, the fields that
//! exclude each other, and the methods and paths forward auth answers besides GET.

use crate::config::Config;
use crate::domain::limits;
use serde_json::{json, Map, Value};

/// The methods an OpenAPI path item can name; forward auth answers every one.
const ALL_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The document as served: the derived one, finished for this configuration.
pub fn finish(doc: &utoipa::openapi::OpenApi, cfg: &Config) -> Value {
    let mut v = serde_json::to_value(doc).unwrap_or(Value::Null);
    limits_of(&mut v, cfg);
    aliases(&mut v);
    exclusions(&mut v, cfg);
    forward_auth(&mut v);
    // A regeneration may be sent without a body (`OptionalBody`).
    if let Some(body) = v.pointer_mut("/paths/~1v1~1tokens~1{id}~1regenerate/post/requestBody") {
        body["required"] = json!(false);
    }
    v
}

fn schema_mut<'a>(v: &'a mut Value, name: &str) -> Option<&'a mut Map<String, Value>> {
    v.pointer_mut(&format!("/components/schemas/{name}"))
        .and_then(Value::as_object_mut)
}

fn set_max(v: &mut Value, schema: &str, field: &str, max: i64) {
    if let Some(p) = v.pointer_mut(&format!("/components/schemas/{schema}/properties/{field}")) {
        p["maximum"] = json!(max);
    }
}

/// A query parameter's schema, by route, method and name.
fn set_param_max(v: &mut Value, path: &str, method: &str, name: &str, max: i64) {
    let Some(params) = v
        .get_mut("paths")
        .and_then(|p| p.get_mut(path))
        .and_then(|p| p.get_mut(method))
        .and_then(|o| o.get_mut("parameters"))
        .and_then(Value::as_array_mut)
    else {
        return;
    };
    for p in params.iter_mut().filter(|p| p["name"] == name) {
        p["schema"]["maximum"] = json!(max);
    }
}

/// The configured maxima, in place of the built-in ones.
fn limits_of(v: &mut Value, cfg: &Config) {
    let t = &cfg.tokens;
    let lifetime = t.max_lifetime_seconds.min(limits::MAX_LIFETIME_SECONDS);
    for schema in ["CreateTokens", "UpdateToken", "Regenerate"] {
        set_max(v, schema, "lifetime_seconds", lifetime);
    }
    set_max(v, "CreateTokens", "count", t.max_count_per_request);
    set_max(
        v,
        "Regenerate",
        "grace_seconds",
        t.max_regenerate_grace_seconds,
    );
    set_max(
        v,
        "MintJwt",
        "lifetime_seconds",
        t.max_jwt_lifetime_seconds.min(limits::MAX_LIFETIME_SECONDS),
    );
    set_param_max(v, "/token/create", "post", "Lifetime", lifetime);
    set_param_max(v, "/token/create", "post", "Count", t.max_count_per_request);
}

/// Fields the daemon also reads under the seeds' names; a field and its alias are one field,
/// and may not both be given.
const ALIASES: [(&str, &str, &str); 6] = [
    ("CreateTokens", "usage_limit", "RequestCount"),
    ("CreateTokens", "lifetime_seconds", "Lifetime"),
    ("CreateTokens", "count", "Count"),
    ("UpdateToken", "usage_limit", "RequestCount"),
    ("UpdateToken", "lifetime_seconds", "Lifetime"),
    ("Regenerate", "lifetime_seconds", "Lifetime"),
];

fn aliases(v: &mut Value) {
    for (schema, field, alias) in ALIASES {
        let Some(s) = schema_mut(v, schema) else {
            continue;
        };
        let Some(mut p) = s.get("properties").and_then(|p| p.get(field)).cloned() else {
            continue;
        };
        p["description"] = json!(format!("`{field}` under the seeds' name."));
        s["properties"][alias] = p;
        forbid_with(s, alias, json!({ "properties": { field: false } }));
    }
}

/// What an object must satisfy when it holds `field` (`dependentSchemas`; the conditions are
/// written without `not`, which generators handle poorly).
fn forbid_with(s: &mut Map<String, Value>, field: &str, condition: Value) {
    let deps = s.entry("dependentSchemas").or_insert_with(|| json!({}));
    match deps.get_mut(field) {
        Some(existing) => {
            let all = existing
                .as_object_mut()
                .map(|e| e.entry("allOf").or_insert_with(|| json!([])));
            if let Some(a) = all.and_then(Value::as_array_mut) {
                a.push(condition);
            }
        }
        None => deps[field] = condition,
    }
}

/// `lifetime_seconds` (or `Lifetime`) and `expires_on` exclude each other, even as `null`; a
/// monthly refill needs a usage limit to refill.
fn exclusions(v: &mut Value, cfg: &Config) {
    for schema in ["CreateTokens", "UpdateToken", "Regenerate"] {
        let Some(s) = schema_mut(v, schema) else {
            continue;
        };
        forbid_with(
            s,
            "expires_on",
            json!({"properties": {"lifetime_seconds": false, "Lifetime": false}}),
        );
    }
    // A refill (not `null`) needs a usage limit: one given is not `null` (unlimited); on
    // creation one is given unless tokens have a default limit (on a change, the token's own
    // counts, which no schema can know).
    let limited = json!({"properties": {"usage_limit": {"type": "integer"}, "RequestCount": {"type": "integer"}}});
    for schema in ["CreateTokens", "UpdateToken"] {
        let Some(s) = schema_mut(v, schema) else {
            continue;
        };
        let mut limited = limited.clone();
        if schema == "CreateTokens" && cfg.tokens.default_usage_limit.is_none() {
            limited["anyOf"] =
                json!([{"required": ["usage_limit"]}, {"required": ["RequestCount"]}]);
        }
        forbid_with(
            s,
            "refill_monthly",
            json!({"anyOf": [{"properties": {"refill_monthly": {"type": "null"}}}, limited]}),
        );
    }
}

/// `/v1/auth` answers every method, and so does `/v1/auth/{path}` (Envoy's ext_authz sends the
/// original method and path after the prefix): both are documented with every method.
fn forward_auth(v: &mut Value) {
    let Some(paths) = v.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    let Some(get) = paths.get("/v1/auth").and_then(|p| p.get("get")).cloned() else {
        return;
    };
    let mut item = Map::new();
    for method in ALL_METHODS {
        let mut op = get.clone();
        op["operationId"] = json!(format!("forward_auth_{method}"));
        item.insert(method.to_string(), op);
    }
    paths.insert("/v1/auth".into(), Value::Object(item.clone()));
    let mut with_path = Map::new();
    for (method, op) in item {
        let mut op = op;
        op["operationId"] = json!(format!("forward_auth_path_{method}"));
        op["summary"] = json!("Forward auth with the original path after /v1/auth (Envoy)");
        op["description"] = json!(
            "The same check, the call being `/{path}` and its query: Envoy's ext_authz HTTP \
             service with `path_prefix: /v1/auth` sends the original method and URI this way. \
             `path` may hold further `/`."
        );
        op["parameters"] = json!([{
            "name": "path",
            "in": "path",
            "required": true,
            "description": "The original request's path, without its leading `/`.",
            "schema": {"type": "string"}
        }]);
        with_path.insert(method, op);
    }
    paths.insert("/v1/auth/{path}".into(), Value::Object(with_path));
}
