//! The `sluice` command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use sluice::ServerOptions;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A WebRTC media server whose streams live only as long as policy allows"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve WHIP, WHEP, the REST API and the example pages.
    Serve {
        /// Directory holding server.properties, apps.toml and plugins/ (absent files mean defaults).
        #[arg(long, value_name = "DIR")]
        config: Option<PathBuf>,
        /// Listen for HTTP here instead of rest_api_address:rest_api_port.
        #[arg(long, value_name = "ADDR")]
        http: Option<SocketAddr>,
        /// Listen for HTTPS here instead of rest_api_address:rest_api_https_port.
        #[arg(long, value_name = "ADDR")]
        https: Option<SocketAddr>,
        /// Log JSON lines instead of human-readable text.
        #[arg(long)]
        log_json: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            http,
            https,
            log_json,
        } => {
            init_logging(log_json);
            let server = sluice::start(ServerOptions {
                config_dir: config,
                http_listen: http,
                https_listen: https,
            })
            .await?;
            // One line on stdout that scripts and tests can wait for; logs go to stderr.
            println!(
                "sluice ready http={} https={}",
                server
                    .http_addr
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "off".into()),
                server
                    .https_addr
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| "off".into()),
            );
            server.run_until_signal().await
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,webrtc=warn,webrtc_ice=warn,webrtc_srtp=warn,webrtc_dtls=warn,webrtc_mdns=warn",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
