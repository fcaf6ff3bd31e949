//! tokenwarden: a daemon that owns an API-token store.
//!
//! - `config`: figment-loaded, fully checked settings.
//! - `clock`: the injected source of "now".
//! - `domain`: token format, roles, scopes, IP rules, limits: plain values, no I/O.
//! - `store`: every SQL statement, for SQLite and PostgreSQL.
//! - `verify`: the verification decision, the group-commit meter that consumes uses, and the service
//!   that ties them to the store.
//! - `admin`: issuance and management operations with the role rules, shared by API and CLI.
//! - `api`: the admin HTTP port (axum), its one error table and the OpenAPI document.
//! - `app`: assembling and running the daemon.
//! - `cli`: the command line.
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod context;
pub mod domain;
pub mod files;
pub mod jobs;
pub mod metrics;
pub mod notify;
pub mod patch;
pub mod seal;
pub mod server;
pub mod stats;
pub mod store;
pub mod telemetry;
pub mod verify;
