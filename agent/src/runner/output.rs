//! The tail of a run's output: a ring of the last N lines, each capped, as DataHub's executor keeps it
//! (2,000 lines × 4,096 characters by default).

use std::collections::VecDeque;

/// Marker appended to a line cut at the per-line cap.
pub const LINE_TRUNCATED: &str = " [...truncated]";
/// Marker put before the tail when older lines were dropped.
pub const EARLIER_TRUNCATED: &str = "[earlier logs truncated...]\n";

#[derive(Debug)]
pub struct OutputTail {
    lines: VecDeque<String>,
    max_lines: usize,
    max_line_chars: usize,
    dropped: u64,
    bytes: u64,
}

impl OutputTail {
    pub fn new(max_lines: usize, max_line_chars: usize) -> OutputTail {
        OutputTail { lines: VecDeque::new(), max_lines: max_lines.max(1), max_line_chars, dropped: 0, bytes: 0 }
    }

    /// Caps a line at the per-line limit (on a character boundary).
    pub fn cap_line(&self, line: &str) -> String {
        match line.char_indices().nth(self.max_line_chars) {
            Some((cut, _)) => format!("{}{LINE_TRUNCATED}", &line[..cut]),
            None => line.to_owned(),
        }
    }

    /// Adds an already capped line, dropping the oldest when full.
    pub fn push(&mut self, line: String) {
        self.bytes += line.len() as u64 + 1;
        if self.lines.len() == self.max_lines {
            self.lines.pop_front();
            self.dropped += 1;
        }
        self.lines.push_back(line);
    }

    /// Bytes of output seen so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The tail as text, one line per line, with a marker when older lines were dropped.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if self.dropped > 0 {
            text.push_str(EARLIER_TRUNCATED);
        }
        for line in &self.lines {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_lines_and_marks_what_it_dropped() {
        let mut tail = OutputTail::new(2, 100);
        tail.push("a".into());
        assert_eq!(tail.render(), "a\n");
        tail.push("b".into());
        tail.push("c".into());
        assert_eq!(tail.render(), "[earlier logs truncated...]\nb\nc\n");
        assert_eq!(tail.bytes(), 6);
    }

    #[test]
    fn caps_long_lines_on_character_boundaries() {
        let tail = OutputTail::new(10, 3);
        assert_eq!(tail.cap_line("abcdef"), "abc [...truncated]");
        assert_eq!(tail.cap_line("ééééé"), "ééé [...truncated]");
        assert_eq!(tail.cap_line("abc"), "abc");
    }
}
