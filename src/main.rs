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
        /// Listen for WCS WebSocket signalling here instead of rest_api_address:ws.port.
        #[arg(long, value_name = "ADDR")]
        ws: Option<SocketAddr>,
        /// Listen for secure WCS WebSocket signalling here instead of rest_api_address:wss.port.
        #[arg(long, value_name = "ADDR")]
        wss: Option<SocketAddr>,
        /// Log JSON lines instead of human-readable text.
        #[arg(long)]
        log_json: bool,
    },
    /// Validate server.properties, apps.toml and the plugins they name; exit non-zero on errors.
    Check {
        #[arg(long, value_name = "DIR", default_value = ".")]
        config: PathBuf,
    },
    /// Print every server.properties key: default, when a change applies, what it does
    /// (the README's table).
    Settings {
        /// As JSON instead of a Markdown table.
        #[arg(long)]
        json: bool,
    },
    /// Work with Lua plugins offline.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Show or edit the applications in apps.toml (the running server applies the change).
    App {
        #[arg(long, value_name = "DIR", default_value = ".")]
        config: PathBuf,
        #[command(subcommand)]
        command: AppCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Run one entry point of a plugin file and print its answer as JSON.
    Test {
        file: PathBuf,
        /// keepalive, publish, play or stop.
        #[arg(long, default_value = "keepalive")]
        event: String,
        /// The stream the plugin sees, as JSON (fields as in /rest-api/stream/find, plus age_ms).
        #[arg(long, default_value = "{}")]
        stream: String,
        /// For publish/play: {"token": ..., "query": {...}, "remote_address": ...}.
        #[arg(long, default_value = "{}")]
        request: String,
        /// For publish/play: what streams.count() answers.
        #[arg(long, default_value_t = 0)]
        players: usize,
        /// Run this named filter instead of an event.
        #[arg(long)]
        filter: Option<String>,
        /// The filter's arguments, as JSON.
        #[arg(long, default_value = "{}")]
        args: String,
        /// For stop: the reason.
        #[arg(long, default_value = "")]
        reason: String,
    },
}

#[derive(Subcommand)]
enum AppCommand {
    /// List the apps, or one app, with their hook URL, plugin and methods.
    Show { name: Option<String> },
    /// Add an app, optionally with its REST hook URL.
    Add { name: String, url: Option<String> },
    /// Remove an app.
    Remove { name: String },
    /// Set an app's REST hook URL.
    Update { name: String, url: String },
    /// Set (or with no file, remove) an app's Lua plugin.
    SetPlugin {
        name: String,
        plugin: Option<String>,
    },
    /// Give an app a REST hook method (StreamKeepAliveEvent, publishStream, …).
    AddRestMethod { name: String, method: String },
    /// Take a REST hook method away from an app.
    RemoveRestMethod { name: String, method: String },
    /// Set a restClientConfig field of a method: clientExclude, restExclude, restOverwrite
    /// (comma lists), restOnError (FAIL|LOG), restPolicy (NOTIFY|OVERWRITE).
    SetRestConfig {
        name: String,
        method: String,
        key: String,
        value: String,
    },
}

/// A listener's address for the ready line, or `off`.
fn shown(address: Option<std::net::SocketAddr>) -> String {
    address.map_or_else(|| "off".into(), |a| a.to_string())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            http,
            https,
            ws,
            wss,
            log_json,
        } => {
            init_logging(log_json);
            let server = sluice::start(ServerOptions {
                config_dir: config,
                http_listen: http,
                https_listen: https,
                ws_listen: ws,
                wss_listen: wss,
            })
            .await?;
            if sluice::api::auth::Tokens::is_open(&server.config.load().settings) {
                tracing::warn!(
                    "no rest_api_tokens set: /rest-api/ answers only on loopback; set rest_api_tokens or rest_api_tokens_file to reach it from elsewhere"
                );
            }
            // One line on stdout that scripts and tests can wait for; logs go to stderr.
            println!(
                "sluice ready http={} https={} ws={} wss={}",
                shown(server.http_addr),
                shown(server.https_addr),
                shown(server.ws_addr),
                shown(server.wss_addr),
            );
            server.run_until_signal().await
        }
        Command::Check { config } => check(&config),
        Command::Settings { json } => {
            let declarations = sluice::config::Settings::declarations();
            if json {
                println!("{}", serde_json::to_string_pretty(&declarations)?);
            } else {
                print!("{}", sluice::config::markdown(&declarations));
            }
            Ok(())
        }
        Command::App { config, command } => app(&config, command),
        Command::Plugin { command } => plugin(command),
    }
}

fn plugin(command: PluginCommand) -> anyhow::Result<()> {
    use sluice::policy::{AdmissionRequest, OfflineCall, StreamView, test_offline};
    let PluginCommand::Test {
        file,
        event,
        stream,
        request,
        players,
        filter,
        args,
        reason,
    } = command;
    let mut view: StreamView =
        serde_json::from_str(&stream).map_err(|e| anyhow::anyhow!("--stream: {e}"))?;
    let call = match (filter, event.as_str()) {
        (Some(name), _) => OfflineCall::Filter {
            name,
            args: serde_json::from_str(&args).map_err(|e| anyhow::anyhow!("--args: {e}"))?,
            view,
        },
        (None, "keepalive") => OfflineCall::KeepAlive(view),
        (None, "publish" | "play") => {
            view.published = event == "publish";
            let request: AdmissionRequest =
                serde_json::from_str(&request).map_err(|e| anyhow::anyhow!("--request: {e}"))?;
            OfflineCall::Admit {
                view,
                request,
                players,
            }
        }
        (None, "stop") => OfflineCall::Stop { view, reason },
        (None, other) => anyhow::bail!("--event {other}: use keepalive, publish, play or stop"),
    };
    let answer = test_offline(&file, call)?;
    println!("{answer}");
    Ok(())
}

fn check(dir: &std::path::Path) -> anyhow::Result<()> {
    let config = sluice::config::Config::load(dir)?;
    let mut problems = Vec::new();
    for (name, app) in &config.apps.apps {
        if let Some(plugin) = &app.plugin {
            let path = config.settings.plugin_dir.join(plugin);
            if !path.is_file() {
                problems.push(format!(
                    "apps.{name}.plugin: {} does not exist",
                    path.display()
                ));
            }
        }
    }
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n"));
    }
    println!(
        "{}: configuration is valid ({} apps)",
        dir.display(),
        config.apps.apps.len()
    );
    // What differs from the defaults, and when each change applies.
    let defaults = sluice::config::Settings::default().as_properties();
    let set = config.settings.as_properties();
    for declared in sluice::config::Settings::declarations() {
        let value = &set[declared.key];
        if defaults.get(declared.key) != Some(value) {
            println!("  {} = {value} ({})", declared.key, declared.apply.as_str());
        }
    }
    Ok(())
}

fn app(dir: &std::path::Path, command: AppCommand) -> anyhow::Result<()> {
    use sluice::config::edit::{AppEdit, apply_to_dir};
    let edit = match command {
        AppCommand::Show { name } => {
            let config = sluice::config::Config::load(dir)?;
            let mut shown = 0;
            for (key, app) in config
                .apps
                .apps
                .iter()
                .filter(|(k, _)| name.as_ref().is_none_or(|n| n == *k))
            {
                shown += 1;
                println!("{key}");
                println!("  url:     {}", app.url.as_deref().unwrap_or("-"));
                println!("  plugin:  {}", app.plugin.as_deref().unwrap_or("-"));
                for (method, rest) in &app.methods {
                    println!(
                        "  method:  {method} restOnError={} restPolicy={} restExclude=[{}] restOverwrite=[{}] clientExclude=[{}]",
                        rest.rest_on_error.as_deref().unwrap_or("FAIL"),
                        rest.rest_policy.as_deref().unwrap_or("NOTIFY"),
                        rest.rest_exclude.join(","),
                        rest.rest_overwrite.join(","),
                        rest.client_exclude.join(","),
                    );
                }
            }
            if let (0, Some(name)) = (shown, name) {
                anyhow::bail!("no app '{name}'");
            }
            return Ok(());
        }
        AppCommand::Add { name, url } => AppEdit::Add { name, url },
        AppCommand::Remove { name } => AppEdit::Remove { name },
        AppCommand::Update { name, url } => AppEdit::Update { name, url },
        AppCommand::SetPlugin { name, plugin } => AppEdit::SetPlugin { name, plugin },
        AppCommand::AddRestMethod { name, method } => AppEdit::AddRestMethod { name, method },
        AppCommand::RemoveRestMethod { name, method } => AppEdit::RemoveRestMethod { name, method },
        AppCommand::SetRestConfig {
            name,
            method,
            key,
            value,
        } => AppEdit::SetRestConfig {
            name,
            method,
            key,
            value,
        },
    };
    apply_to_dir(dir, &edit)?;
    println!("{}: updated", dir.join("apps.toml").display());
    Ok(())
}

fn init_logging(json: bool) {
    // The engines' own per-session state changes are debug detail here: Sluice logs each
    // session's start and end itself. A DTLS extension the `rtc` engine does not know (a
    // GStreamer client's session ticket) is not worth a warning per session either.
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,webrtc=warn,webrtc_ice=warn,webrtc_srtp=warn,webrtc_dtls=warn,webrtc_mdns=warn,\
             rtc=warn,rtc_ice=warn,rtc_srtp=warn,rtc_sctp=warn,rtc_interceptor=warn,rtc_dtls=error",
        )
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
