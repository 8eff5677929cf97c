//! `containerd-shim-husk-v2`: the containerd shim v2 for husk (runtime `io.containerd.husk.v2`).

use husk_shim::lifecycle;

fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let result = containerd_shim::parse(&args).map_err(lifecycle::LifecycleError::from).and_then(|flags| {
        if flags.version {
            println!("containerd-shim-husk-v2 {} ({})", env!("CARGO_PKG_VERSION"), husk_shim::RUNTIME_ID);
            return Ok(());
        }
        if flags.namespace.is_empty() {
            return Err(lifecycle::LifecycleError::MissingFlag("namespace"));
        }
        match flags.action.as_str() {
            "start" => lifecycle::start(&flags),
            "delete" => lifecycle::delete(&flags),
            "" => lifecycle::serve(&flags),
            other => Err(lifecycle::LifecycleError::UnknownAction(other.into())),
        }
    });
    if let Err(e) = result {
        eprintln!("containerd-shim-husk-v2: {}", husk_shim::error::chain(&e));
        std::process::exit(1);
    }
}
