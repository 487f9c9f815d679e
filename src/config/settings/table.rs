//! The declaration of a setting and the macro that turns one table of declarations into the
//! [`Settings`](super::Settings) struct, its defaults, its parser, its `as_properties` view,
//! its restart-key handling and the README's table. A key exists only by being declared.

use std::fmt::Write;

/// When a changed value takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Apply {
    /// At once, for the next request or tick that reads it.
    Hot,
    /// For plugins loaded after the change (a reload or an edited plugin).
    NextLoad,
    /// Only at the next start; until then the running value stays and the change is reported.
    Restart,
}

impl Apply {
    pub fn as_str(self) -> &'static str {
        match self {
            Apply::Hot => "hot",
            Apply::NextLoad => "hot (next load)",
            Apply::Restart => "restart",
        }
    }
}

/// One `server.properties` key, as declared.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Declaration {
    pub key: &'static str,
    /// The default, spelled as the file would spell it (empty for none).
    pub default: String,
    pub unit: &'static str,
    pub apply: Apply,
    pub doc: &'static str,
}

/// The README's table of settings, generated from the declarations.
pub fn markdown(declarations: &[Declaration]) -> String {
    let mut table =
        String::from("| key | default | applies | meaning |\n| --- | --- | --- | --- |\n");
    for d in declarations {
        let default = match (d.default.as_str(), d.unit) {
            ("", _) => "—".to_string(),
            (value, "") => format!("`{value}`"),
            (value, unit) => format!("`{value}` ({unit})"),
        };
        let _ = writeln!(
            table,
            "| `{}` | {default} | {} | {} |",
            d.key,
            d.apply.as_str(),
            d.doc
        );
    }
    table
}

/// The key as `server.properties` spells it: the field's name, or the spelling given with
/// `as` (WCS's keys with dots, such as `ws.port`).
macro_rules! key_name {
    ($key:ident) => {
        stringify!($key)
    };
    ($key:ident $name:literal) => {
        $name
    };
}

/// Declares every setting: `key: Type = default, Kind, Apply, "doc";`, or
/// `field as "spelled.key": …` where the key is not a Rust name.
macro_rules! declare_settings {
    ($( $key:ident $(as $name:literal)? : $ty:ty = $default:expr, $kind:expr, $apply:ident, $doc:literal; )*) => {
        /// Typed server settings, one field per `server.properties` key.
        #[derive(Debug, Clone, PartialEq)]
        pub struct Settings {
            $( #[doc = $doc] pub $key: $ty, )*
        }

        impl Default for Settings {
            fn default() -> Self {
                Settings { $( $key: $default, )* }
            }
        }

        impl Settings {
            /// Every key, in the order of the table.
            pub fn declarations() -> Vec<Declaration> {
                let d = Settings::default();
                vec![$(
                    Declaration {
                        key: key_name!($key $($name)?),
                        default: Kind::show(&$kind, &d.$key),
                        unit: Kind::unit(&$kind),
                        apply: Apply::$apply,
                        doc: $doc,
                    },
                )*]
            }

            /// Whether `key` is declared.
            pub fn is_known(key: &str) -> bool {
                [$( key_name!($key $($name)?), )*].contains(&key)
            }

            fn read_declared(reader: &Reader) -> Result<Settings, ConfigError> {
                let d = Settings::default();
                Ok(Settings { $( $key: reader.read(key_name!($key $($name)?), &$kind, d.$key)?, )* })
            }

            /// Every key with the value in force, as `server.properties` would spell it.
            /// Secret lists are shown as a count, never in clear.
            pub fn as_properties(&self) -> BTreeMap<&'static str, String> {
                BTreeMap::from([$( (key_name!($key $($name)?), Kind::show(&$kind, &self.$key)), )*])
            }

            /// Puts back the running value of every restart-only key.
            pub fn keep_restart_values(&mut self, running: &Settings) {
                $( if Apply::$apply == Apply::Restart { self.$key = running.$key.clone(); } )*
            }
        }
    };
}

pub(super) use {declare_settings, key_name};
