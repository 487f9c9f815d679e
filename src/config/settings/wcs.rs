//! A WCS user's `flashphoner.properties` read as `server.properties`: keys Sluice implements
//! take effect; keys of the model's documented settings that Sluice does not implement are
//! ignored (and reported); anything else is a typo, refused with the nearest known key.

/// Keys of WCS's `flashphoner.properties` that Flashphoner documents.
const DOCUMENTED: &str = include_str!("wcs_keys.txt");

/// Whether `key` is one of the model's documented settings.
pub fn is_documented(key: &str) -> bool {
    documented().any(|k| k == key)
}

fn documented() -> impl Iterator<Item = &'static str> {
    DOCUMENTED
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

/// The known key (Sluice's or the model's) nearest to `typo`, if one is near enough to be
/// what was meant.
pub fn nearest<'a>(typo: &str, sluice_keys: impl Iterator<Item = &'a str>) -> Option<String> {
    let typo_lower = typo.to_ascii_lowercase();
    sluice_keys
        .map(|known| known.to_string())
        .chain(documented().map(String::from))
        .map(|known| (strsim::damerau_levenshtein(&typo_lower, &known), known))
        .filter(|(distance, known)| *distance <= (known.len() / 4).clamp(1, 3))
        .min()
        .map(|(_, known)| known)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_list_is_read() {
        assert!(is_documented("ws.port"));
        assert!(is_documented("ice_tcp_transport"));
        assert!(!is_documented("# Sources:"));
        assert!(!is_documented("rest_api_prot"));
        let keys: Vec<_> = documented().collect();
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(keys, sorted, "wcs_keys.txt stays sorted, each key once");
    }

    #[test]
    fn typos_get_the_nearest_key() {
        let ours = ["rest_api_port", "max_sessions"];
        assert_eq!(
            nearest("rest_api_prot", ours.into_iter()).as_deref(),
            Some("rest_api_port")
        );
        assert_eq!(
            nearest("ice_tcp_transprot", ours.into_iter()).as_deref(),
            Some("ice_tcp_transport")
        );
        assert_eq!(nearest("something_else_entirely", ours.into_iter()), None);
    }
}
