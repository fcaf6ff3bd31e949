//! Integration tests: the daemon over real HTTP on a random loopback port, every store scenario
//! on SQLite and on PostgreSQL (`TOKENWARDEN_TEST_PG_URL`).

mod helpers;

mod accounts;
mod audit;
mod cli;
mod durability;
mod faults;
mod hardening;
mod jobs;
mod jobs_env;
mod jwt;
mod legacy;
mod mail;
mod nginx;
mod openapi;
mod ops;
mod people;
mod rate;
mod scale;
mod secret_calls;
mod service;
mod tokens;
mod verify;
