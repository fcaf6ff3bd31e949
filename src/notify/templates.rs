//! Message templates: a subject, a plain-text and an HTML part per message, from `templates/`
//! (built into the binary) or from `email.templates_dir`. All are compiled and test-rendered
//! at start, so a broken one stops the daemon with its file and line.

use minijinja::{Environment, UndefinedBehavior};
use serde_json::json;
use std::path::Path;

/// The messages and the built-in source of each part.
const BUILT_IN: &[(&str, &str)] = &[
    (
        "expiry_warning.subject.txt",
        include_str!("../../templates/expiry_warning.subject.txt"),
    ),
    (
        "expiry_warning.txt",
        include_str!("../../templates/expiry_warning.txt"),
    ),
    (
        "expiry_warning.html",
        include_str!("../../templates/expiry_warning.html"),
    ),
    (
        "expired.subject.txt",
        include_str!("../../templates/expired.subject.txt"),
    ),
    ("expired.txt", include_str!("../../templates/expired.txt")),
    ("expired.html", include_str!("../../templates/expired.html")),
    (
        "token_issued.subject.txt",
        include_str!("../../templates/token_issued.subject.txt"),
    ),
    (
        "token_issued.txt",
        include_str!("../../templates/token_issued.txt"),
    ),
    (
        "token_issued.html",
        include_str!("../../templates/token_issued.html"),
    ),
];

/// The topics that have templates.
pub const TOPICS: [&str; 3] = ["expiry_warning", "expired", "token_issued"];

/// A message rendered for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Subject line.
    pub subject: String,
    /// Plain-text part.
    pub text: String,
    /// HTML part.
    pub html: String,
}

/// The compiled templates.
pub struct Templates {
    env: Environment<'static>,
    /// Where they came from, for errors.
    dir: String,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Templates")
    }
}

/// Describes a template error with its file and line.
fn describe(dir: &str, e: &minijinja::Error) -> String {
    let name = e.name().unwrap_or("?");
    match e.line() {
        Some(l) => format!(
            "{dir}/{name} line {l}: {}",
            e.detail().unwrap_or(&e.to_string())
        ),
        None => format!("{dir}/{name}: {e}"),
    }
}

impl Templates {
    /// Loads the templates (from `dir`, or the built-in ones) and checks each compiles and
    /// renders with a sample message of its kind.
    pub fn load(dir: Option<&Path>) -> Result<Templates, String> {
        let mut env = Environment::new();
        // A misspelt variable is an error, not an empty string in somebody's inbox.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        let shown = dir.map_or("templates (built in)".to_string(), |d| {
            d.display().to_string()
        });
        for (name, built_in) in BUILT_IN {
            let source = match dir {
                Some(d) => std::fs::read_to_string(d.join(name))
                    .map_err(|e| format!("{}: {e}", d.join(name).display()))?,
                None => built_in.to_string(),
            };
            env.add_template_owned(name.to_string(), source)
                .map_err(|e| describe(&shown, &e))?;
        }
        let t = Templates { env, dir: shown };
        for topic in TOPICS {
            for secret in [true, false] {
                t.render(topic, &sample(topic, secret))
                    .map_err(|e| format!("{e} (checking {topic} with a sample message)"))?;
            }
        }
        Ok(t)
    }

    /// Renders `topic`'s three parts with `ctx`.
    pub fn render(&self, topic: &str, ctx: &serde_json::Value) -> Result<Rendered, String> {
        let part = |suffix: &str| -> Result<String, String> {
            let name = format!("{topic}.{suffix}");
            let tmpl = self
                .env
                .get_template(&name)
                .map_err(|e| format!("template {name}: {e}"))?;
            tmpl.render(minijinja::value::Serde(ctx))
                .map_err(|e| describe(&self.dir, &e))
        };
        Ok(Rendered {
            subject: part("subject.txt")?
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string(),
            text: part("txt")?,
            html: part("html")?,
        })
    }
}

/// A message of `topic` as the daemon builds it, for checking templates at start: with only the
/// fields the daemon gives that topic (`notify::expiry_messages`, `notify::issued_messages`), so
/// a template naming another topic's field fails at start, not at every send.
pub fn sample(topic: &str, secret: bool) -> serde_json::Value {
    let mut v = json!({
        "token": {
            "id": "AbCdEf12", "name": "nightly export", "role": "user", "scopes": ["convert:*"],
            "account_id": "Acct000001", "expires_at": "2027-01-01T00:00:00Z", "usage_limit": 1000,
        },
        "account": {"id": "Acct000001", "name": "acme"},
        "regenerate_command": "tokenwarden token regenerate AbCdEf12",
        "rotate_command": "tokenwarden token regenerate AbCdEf12 --expires-on YYYY-MM-DD",
        "regenerate_url": "http://127.0.0.1:8470/v1/tokens/AbCdEf12/regenerate",
        "token_url": "http://127.0.0.1:8470/v1/tokens/AbCdEf12",
        "secret": null,
    });
    match topic {
        "token_issued" => {
            v["policy"] = json!("acme-monthly");
            v["period"] = json!("2026-12");
            if secret {
                v["secret"] = json!("tw_AbCdEf12xxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
            }
        }
        _ => {
            v["days_left"] = json!(7);
            v["threshold_days"] = if topic == "expired" {
                serde_json::Value::Null
            } else {
                json!(7)
            };
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_templates_render_both_parts_and_escape_html() {
        let t = Templates::load(None).unwrap();
        let mut ctx = sample("expiry_warning", false);
        ctx["token"]["name"] = json!("<b>x</b>");
        let r = t.render("expiry_warning", &ctx).unwrap();
        assert_eq!(
            r.subject,
            "Token \"<b>x</b>\" expires in 7 days (2027-01-01T00:00:00Z)"
        );
        assert!(r.text.contains("tokenwarden token regenerate AbCdEf12"));
        assert!(
            r.html.contains("&lt;b&gt;x&lt;") && !r.html.contains("<b>x"),
            "{}",
            r.html
        );
        let issued = t
            .render("token_issued", &sample("token_issued", false))
            .unwrap();
        assert!(
            !issued.text.contains("tw_AbCdEf12"),
            "no secret unless asked"
        );
        let issued = t
            .render("token_issued", &sample("token_issued", true))
            .unwrap();
        assert!(issued.text.contains("tw_AbCdEf12xxx"));
    }

    /// A template naming a field its topic's messages do not carry is refused at load, not
    /// accepted and then failed at every send.
    #[test]
    fn a_template_naming_another_topics_field_is_refused() {
        for (file, src) in [
            ("token_issued.txt", "{{ days_left }} days\n"),
            ("expiry_warning.txt", "policy {{ policy }}\n"),
            ("expired.txt", "issued for {{ period }}\n"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            for (name, built_in) in BUILT_IN {
                std::fs::write(dir.path().join(name), built_in).unwrap();
            }
            std::fs::write(dir.path().join(file), src).unwrap();
            let e = Templates::load(Some(dir.path())).err();
            assert!(
                e.as_deref().is_some_and(|e| e.contains(file)),
                "{file}: {e:?}"
            );
        }
    }

    #[test]
    fn a_broken_template_names_its_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        for (name, src) in BUILT_IN {
            std::fs::write(dir.path().join(name), src).unwrap();
        }
        std::fs::write(
            dir.path().join("expired.txt"),
            "Hello\n\n{% if token.name %}\nno end\n",
        )
        .unwrap();
        let e = Templates::load(Some(dir.path())).unwrap_err();
        assert!(e.contains("expired.txt line"), "{e}");
        std::fs::write(dir.path().join("expired.txt"), "Hello\n{{ token.nmae }}\n").unwrap();
        let e = Templates::load(Some(dir.path())).unwrap_err();
        assert!(e.contains("expired.txt line 2"), "{e}");
    }
}
