//! Detects the installed virglrenderer's version (pkg-config) and turns it into cfg flags, so
//! this crate builds against Debian 12's 0.10.4 and against newer releases alike:
//! - `virglrenderer_0_10`: 0.10 or newer (per-context fences, blobs, context init: required);
//! - `virglrenderer_1`: 1.0 or newer.

fn main() {
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo:rustc-check-cfg=cfg(virglrenderer_0_10)");
    println!("cargo:rustc-check-cfg=cfg(virglrenderer_1)");
    let lib = match pkg_config::Config::new()
        .cargo_metadata(false)
        .probe("virglrenderer")
    {
        Ok(lib) => lib,
        Err(e) => {
            panic!("virglrenderer not found by pkg-config ({e}); install libvirglrenderer-dev")
        }
    };
    let parts: Vec<u32> = lib
        .version
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    let (major, minor) = (
        parts.first().copied().unwrap_or(0),
        parts.get(1).copied().unwrap_or(0),
    );
    if (major, minor) < (0, 10) {
        panic!(
            "virglrenderer {} is too old: 0.10 or newer is needed",
            lib.version
        );
    }
    println!("cargo:rustc-cfg=virglrenderer_0_10");
    if major >= 1 {
        println!("cargo:rustc-cfg=virglrenderer_1");
    }
    println!("cargo:rustc-env=VIRGLRENDERER_VERSION={}", lib.version);
}
