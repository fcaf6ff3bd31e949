//! Build script: only decides whether the PostgreSQL half of the store tests is compiled in as
//! runnable (`TOKENWARDEN_TEST_PG_URL` set) or as ignored, so a run without PostgreSQL reports
//! those tests as skipped instead of passing silently.

fn main() {
    println!("cargo::rerun-if-env-changed=TOKENWARDEN_TEST_PG_URL");
    println!("cargo::rustc-check-cfg=cfg(tw_pg_tests)");
    if std::env::var("TOKENWARDEN_TEST_PG_URL").is_ok_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=tw_pg_tests");
    } else {
        println!(
            "cargo::warning=TOKENWARDEN_TEST_PG_URL is not set: the PostgreSQL half of the store tests is compiled as ignored (reported as skipped)"
        );
    }
    // Migrations are embedded: rebuild when they change.
    println!("cargo::rerun-if-changed=migrations");
}
