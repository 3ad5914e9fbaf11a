//! HTML building blocks of the status page: escaping (every text from outside goes through [`esc`]), the page
//! frame, tables, times and ages. Pure string building; never reads state.

use std::fmt::Write as _;

use outpost_common::clock::unix_ms;

/// Text made safe for HTML element content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A query-string value.
pub fn url_value(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// "12 s ago", "3 min ago", "2 h ago", "5 d ago"; "-" for none.
pub fn ago(at_ms: i64) -> String {
    if at_ms <= 0 {
        return "-".to_owned();
    }
    let seconds = (unix_ms() - at_ms).max(0) / 1000;
    span(seconds).map(|s| format!("{s} ago")).unwrap_or_else(|| "just now".to_owned())
}

/// "in 3 h" / "2 min ago" for a time that may be ahead.
pub fn until(at_ms: i64) -> String {
    if at_ms <= 0 {
        return "-".to_owned();
    }
    let now = unix_ms();
    if at_ms < now {
        return format!("expired {}", ago(at_ms));
    }
    span((at_ms - now) / 1000).map(|s| format!("in {s}")).unwrap_or_else(|| "now".to_owned())
}

fn span(seconds: i64) -> Option<String> {
    Some(match seconds {
        0 => return None,
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} d", s / 86_400),
    })
}

/// A time as UTC text, in a `<time>` element.
pub fn time(at_ms: i64) -> String {
    if at_ms <= 0 {
        return "-".to_owned();
    }
    let stamp = humantime::format_rfc3339_seconds(outpost_common::clock::system_time(at_ms));
    format!("<time datetime=\"{stamp}\">{}</time>", stamp.to_string().replace('T', " ").replace('Z', " UTC"))
}

/// A state badge: the state in words (never color alone), styled by its class.
pub fn badge(state: &str) -> String {
    format!("<span class=\"badge s-{}\">{}</span>", esc(&state.to_ascii_lowercase()), esc(state))
}

/// A table with a caption and column headers; `rows` are already-escaped cells.
pub fn table(caption: &str, headers: &[&str], rows: &[Vec<String>], empty: &str) -> String {
    let mut out = format!("<div class=\"scroll\"><table><caption>{}</caption><thead><tr>", esc(caption));
    for header in headers {
        let _ = write!(out, "<th scope=\"col\">{}</th>", esc(header));
    }
    out.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(out, "<tr><td colspan=\"{}\" class=\"empty\">{}</td></tr>", headers.len(), esc(empty));
    }
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

/// A whole page: header with navigation, the live region (refreshed from `refresh` every `refresh_ms`), a footer.
pub fn page(title: &str, current: &str, live: &str, refresh: Option<(&str, u64)>) -> String {
    page_with(title, current, live, refresh, false)
}

/// The same, with the audit page in the navigation (for admin logins) when `audit` is set.
pub fn page_with(title: &str, current: &str, live: &str, refresh: Option<(&str, u64)>, audit: bool) -> String {
    let links: &[(&str, &str)] = if audit {
        &[("/", "Fleet"), ("/tasks", "Tasks"), ("/audit", "Audit")]
    } else {
        &[("/", "Fleet"), ("/tasks", "Tasks")]
    };
    let nav = links
        .iter()
        .map(|(href, label)| {
            let here = if *href == current { " aria-current=\"page\"" } else { "" };
            format!("<a href=\"{href}\"{here}>{label}</a>")
        })
        .collect::<String>();
    let refresh = match refresh {
        Some((url, ms)) => format!(" data-refresh=\"{}\" data-every=\"{ms}\"", esc(url)),
        None => String::new(),
    };
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Outpost</title><link rel=\"stylesheet\" href=\"/assets/ui.css\">\
         <script src=\"/assets/ui.js\" defer></script></head><body>\
         <a class=\"skip\" href=\"#live\">Skip to content</a>\
         <header><span class=\"brand\">Outpost</span><nav aria-label=\"Main\">{nav}</nav>\
         <form method=\"post\" action=\"/logout\"><button type=\"submit\">Log out</button></form></header>\
         <main id=\"live\" tabindex=\"-1\"{refresh}>{live}</main>\
         <footer><span id=\"updated\" aria-live=\"off\"></span></footer></body></html>",
        title = esc(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_outside_cannot_become_markup() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(url_value("urn:li:x y&z"), "urn%3Ali%3Ax%20y%26z");
        let cells = vec![vec![esc("<b>")]];
        assert!(table("Caption <i>", &["A"], &cells, "none").contains("<caption>Caption &lt;i&gt;</caption>"));
        assert!(table("C", &["A", "B"], &[], "nothing here").contains("colspan=\"2\""));
    }

    #[test]
    fn ages_read_naturally() {
        let now = unix_ms();
        assert_eq!(ago(now - 5_000), "5 s ago");
        assert_eq!(ago(now - 600_000), "10 min ago");
        assert_eq!(ago(0), "-");
        assert!(until(now + 3 * 3600 * 1000 + 5000).starts_with("in 3 h"));
        assert!(until(now - 120_000).starts_with("expired 2 min ago"));
    }
}
