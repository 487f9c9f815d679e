//! Build-time switches of the test suite: `SLUICE_SKIP_BROWSER` set outside CI compiles the
//! browser test as ignored, so that `cargo test` counts it as skipped ("1 ignored") rather
//! than passed. Under CI (`CI` set, not empty, `0` or `false`) the variable is ignored.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=SLUICE_SKIP_BROWSER");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rustc-check-cfg=cfg(sluice_skip_browser)");
    let ci = std::env::var("CI").unwrap_or_default();
    let under_ci = !(ci.is_empty() || ci == "0" || ci.eq_ignore_ascii_case("false"));
    if std::env::var_os("SLUICE_SKIP_BROWSER").is_some() && !under_ci {
        println!("cargo::rustc-cfg=sluice_skip_browser");
    }
}
