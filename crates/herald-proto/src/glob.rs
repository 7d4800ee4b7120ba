//! Permission patterns: an exact name, or a pattern where `*` matches any run of
//! characters (`:` included), as docs/protocol.md defines for `channels` and `publish` claims.

/// Whether `name` matches `pattern`.
///
/// Iterative with single-star backtracking, so a hostile pattern such as
/// `*a*a*a*a*b` costs O(len(pattern) × len(name)) at worst, never exponential time.
pub fn matches(pattern: &str, name: &str) -> bool {
    let p = pattern.as_bytes();
    let n = name.as_bytes();
    let (mut pi, mut ni) = (0usize, 0usize);
    // Position of the last `*` seen in the pattern and the name index it was tried at.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Whether any of `patterns` matches `name`.
pub fn any_matches<S: AsRef<str>>(patterns: &[S], name: &str) -> bool {
    patterns.iter().any(|p| matches(p.as_ref(), name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(pattern: &str, name: &str, expected: bool) {
        assert_eq!(matches(pattern, name), expected, "{pattern:?} vs {name:?}");
    }

    #[test]
    fn table() {
        check("news", "news", true);
        check("news", "news2", false);
        check("news", "new", false);
        check("chat:*", "chat:room1", true);
        check("chat:*", "chat:", true);
        check("chat:*", "chat", false);
        check("chat:*", "chat:a:b", true);
        check("*", "", true);
        check("*", "anything:at:all", true);
        check("a*b*c", "aXXbYYc", true);
        check("a*b*c", "aXXbYY", false);
        check("*:admin", "team:admin", true);
        check("*:admin", "team:admins", false);
        check("", "", true);
        check("", "x", false);
        check("**", "x", true);
    }

    #[test]
    fn no_exponential_blowup() {
        let name = "a".repeat(255);
        let pattern = format!("{}b", "*a".repeat(50));
        assert!(!matches(&pattern, &name));
    }

    proptest::proptest! {
        #[test]
        fn star_matches_everything(s in ".{0,64}") {
            proptest::prop_assert!(matches("*", &s));
        }

        #[test]
        fn literal_matches_itself_only(s in "[a-z:]{0,16}", t in "[a-z:]{0,16}") {
            proptest::prop_assert_eq!(matches(&s, &t), s == t);
        }

        #[test]
        fn prefix_star(prefix in "[a-z:]{0,8}", rest in "[a-z:]{0,8}") {
            let name = format!("{prefix}{rest}");
            let pattern = format!("{prefix}*");
            proptest::prop_assert!(matches(&pattern, &name));
        }
    }
}
