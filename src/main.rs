//! The `tokenwarden` binary: parse the command line and hand over to `cli::run`; the only place
//! that prints a fatal error and picks the exit code.

use clap::Parser;

// glibc's allocator spent about a seventh of the daemon's CPU under verify load (memory freed on
// another thread than the one that allocated it: request tasks, the meter's threads); mimalloc
// keeps per-thread free lists.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = tokenwarden::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    match runtime.block_on(tokenwarden::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(tokenwarden::cli::exit_code(&e))
        }
    }
}
