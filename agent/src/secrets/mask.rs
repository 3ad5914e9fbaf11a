//! Masking: every resolved secret value is replaced by `***REDACTED:NAME***` in text before it is buffered,
//! logged or sent anywhere.

use super::Secrets;

/// Values shorter than this are not masked: replacing one or two characters everywhere would destroy the output
/// and still not hide anything.
pub const MIN_MASKED_LEN: usize = 3;

/// Replaces secret values in text. Longer values are replaced first, so a secret that contains another is masked
/// whole.
#[derive(Clone, Default)]
pub struct Masker {
    /// (value, replacement), longest value first.
    rules: Vec<(String, String)>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} values)", self.rules.len())
    }
}

impl Masker {
    pub fn new(secrets: &Secrets) -> Masker {
        let mut rules: Vec<(String, String)> = secrets
            .iter()
            .filter(|(_, value)| value.expose().len() >= MIN_MASKED_LEN)
            .map(|(name, value)| (value.expose().to_owned(), format!("***REDACTED:{name}***")))
            .collect();
        rules.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Masker { rules }
    }

    pub fn mask(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for (value, replacement) in &self.rules {
            if text.contains(value.as_str()) {
                text = text.replace(value.as_str(), replacement);
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::super::Secret;
    use super::*;

    #[test]
    fn masks_every_value_longest_first_and_skips_tiny_ones() {
        let secrets: Secrets = [("DB_PASSWORD", "hunter22"), ("DB_PASSWORD_OLD", "hunter22-old"), ("PIN", "7")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Secret::new(v.to_owned())))
            .collect();
        let masker = Masker::new(&secrets);
        assert_eq!(
            masker.mask("login with hunter22 (was hunter22-old), pin 7"),
            "login with ***REDACTED:DB_PASSWORD*** (was ***REDACTED:DB_PASSWORD_OLD***), pin 7"
        );
        assert_eq!(masker.mask("nothing here"), "nothing here");
        assert_eq!(format!("{masker:?}"), "Masker(2 values)");
    }
}
