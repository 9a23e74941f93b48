//! Readable generated passwords and secrets: `word-word-NN`, easy to type on any keyboard
//! layout and to read aloud, from the system's random source.

/// Short, common English words without look-alike letters or ambiguity when spoken.
const WORDS: [&str; 128] = [
    "acorn", "amber", "anchor", "apple", "arrow", "badge", "bagel", "basil", "beach", "berry", "bison", "blade",
    "bloom", "board", "brick", "brook", "cabin", "camel", "candy", "canoe", "cedar", "chalk", "cherry", "cider",
    "cloud", "clover", "cobra", "comet", "coral", "crane", "daisy", "delta", "denim", "dingo", "dove", "dune", "eagle",
    "ember", "fable", "falcon", "fern", "flute", "forest", "fox", "frost", "garden", "gecko", "ginger", "glade",
    "grape", "gravel", "harbor", "hazel", "heron", "honey", "igloo", "island", "ivory", "jaguar", "jelly", "jungle",
    "kayak", "kettle", "kiwi", "koala", "lagoon", "lemon", "lily", "linen", "lotus", "mango", "maple", "marble",
    "meadow", "melon", "mint", "moose", "nectar", "noodle", "oasis", "ocean", "olive", "onion", "orbit", "otter",
    "panda", "parrot", "pebble", "pepper", "piano", "pilot", "planet", "plum", "pond", "puffin", "quartz", "quill",
    "rabbit", "radar", "raven", "reef", "river", "robin", "rocket", "saddle", "salmon", "sand", "shell", "silver",
    "sparrow", "spruce", "stone", "sugar", "summit", "tango", "tiger", "tulip", "tundra", "turtle", "valley", "velvet",
    "violet", "walnut", "willow", "winter", "yogurt", "zebra", "zinc",
];

/// A fresh `word-word-NN` (about 21 bits: enough behind a throttle on a classroom network,
/// not for anything else).
pub fn generate() -> anyhow::Result<String> {
    let mut bytes = [0u8; 3];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no random numbers from the system: {e}"))?;
    let first = usize::from(bytes[0]) % WORDS.len();
    // Never the same word twice (`blade-blade` reads like a typo).
    let second = (first + 1 + usize::from(bytes[1]) % (WORDS.len() - 1)) % WORDS.len();
    Ok(format!("{}-{}-{:02}", WORDS[first], WORDS[second], 10 + bytes[2] % 90))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readable_and_varied() {
        let all: std::collections::BTreeSet<String> = (0..50).map(|_| generate().unwrap()).collect();
        assert!(all.len() > 40, "{all:?}");
        for secret in &all {
            let parts: Vec<&str> = secret.split('-').collect();
            assert_eq!(parts.len(), 3, "{secret}");
            assert!(WORDS.contains(&parts[0]) && WORDS.contains(&parts[1]));
            assert_ne!(parts[0], parts[1]);
            assert!(parts[2].len() == 2 && parts[2].bytes().all(|b| b.is_ascii_digit()));
        }
    }

    #[test]
    fn words_are_distinct_lowercase_ascii() {
        let set: std::collections::BTreeSet<&str> = WORDS.into_iter().collect();
        assert_eq!(set.len(), WORDS.len());
        assert!(WORDS.iter().all(|w| w.bytes().all(|b| b.is_ascii_lowercase())));
    }
}
