//! Which husk configuration file applies: the containerd runtime option `ConfigPath` (CRI's
//! `runtimeoptions.v1.Options`), else `$HUSK_CONFIG`, else `/etc/husk/config.toml`.

use std::path::PathBuf;

use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::CodedInputStream;
use husk_config::HuskConfig;

use crate::error::{Result, ShimError};

/// Type name CRI uses for the options of runtimes other than runc.
pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// `ConfigPath` from the runtime options: containerd's CRI plugin passes a runtime handler's
/// `options` as CRI's generic `runtimeoptions.v1.Options` (`TypeUrl`, `ConfigPath`). Options of
/// another type (e.g. runc's) or with other fields are refused by name rather than ignored.
pub fn config_path_from_options(any: Option<&Any>) -> Result<Option<PathBuf>> {
    let Some(any) = any else { return Ok(None) };
    if any.type_url.is_empty() && any.value.is_empty() {
        return Ok(None);
    }
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    if name != RUNTIME_OPTIONS_TYPE {
        return Err(ShimError::invalid(
            "runtime options",
            format!("options of type {:?} are not husk's: the husk runtime takes {RUNTIME_OPTIONS_TYPE} (ConfigPath)", any.type_url),
        ));
    }
    let bad = |e: containerd_shim_protos::protobuf::Error| ShimError::invalid("runtime options", format!("{RUNTIME_OPTIONS_TYPE}: {e}"));
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut path = None;
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(bad)? {
        match tag {
            // field 2 (config_path), wire type 2 (length-delimited)
            // field 1 (type_url): the type the options claim, informative only
            0x0a => {
                input.read_string().map_err(bad)?;
            }
            0x12 => path = Some(PathBuf::from(input.read_string().map_err(bad)?)),
            _ => {
                return Err(ShimError::invalid(
                    "runtime options",
                    format!("{RUNTIME_OPTIONS_TYPE} has no field {} (husk knows TypeUrl and ConfigPath)", tag >> 3),
                ))
            }
        }
    }
    Ok(path.filter(|p| !p.as_os_str().is_empty()))
}

/// Loads the configuration from `explicit` or the default path.
pub fn load_config(explicit: Option<PathBuf>) -> Result<(PathBuf, HuskConfig)> {
    let path = explicit.unwrap_or_else(HuskConfig::default_path);
    let cfg = HuskConfig::load(&path).map_err(|source| ShimError::Config { path: path.clone(), source })?;
    Ok((path, cfg))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn config_path_is_decoded_from_cri_runtime_options() {
        // type_url = "x" (field 1), config_path = "/etc/h.toml" (field 2)
        let mut value = vec![0x0a, 1, b'x', 0x12, 11];
        value.extend_from_slice(b"/etc/h.toml");
        let any = Any { type_url: RUNTIME_OPTIONS_TYPE.into(), value, ..Default::default() };
        assert_eq!(config_path_from_options(Some(&any)).unwrap(), Some(PathBuf::from("/etc/h.toml")));
        let other = Any { type_url: "containerd.runc.v1.Options".into(), value: vec![1, 2, 3], ..Default::default() };
        let e = crate::error::chain(&config_path_from_options(Some(&other)).unwrap_err());
        assert!(e.contains("containerd.runc.v1.Options"), "{e}");
        // field 3 (varint) is nothing husk knows
        let unknown = Any { type_url: RUNTIME_OPTIONS_TYPE.into(), value: vec![0x18, 1], ..Default::default() };
        let e = crate::error::chain(&config_path_from_options(Some(&unknown)).unwrap_err());
        assert!(e.contains("no field 3"), "{e}");
        assert_eq!(config_path_from_options(Some(&Any::default())).unwrap(), None);
        let broken = Any { type_url: RUNTIME_OPTIONS_TYPE.into(), value: vec![0x12, 50, b'a'], ..Default::default() };
        assert!(config_path_from_options(Some(&broken)).is_err());
    }

    #[test]
    fn explicit_missing_config_is_an_error_naming_it() {
        let e = load_config(Some("/nonexistent/c.toml".into())).unwrap_err();
        assert!(crate::error::chain(&e).contains("/nonexistent/c.toml"));
    }
}
