//! A small EDN reader, enough for Jepsen histories (no dependency on a Clojure toolchain).
//!
//! It reads nil, booleans, integers, floats, strings, characters, keywords, symbols, lists,
//! vectors, maps, sets and tagged literals (`#inst "..."`, kept as `Tagged`), skips `;` comments,
//! commas and `#_` discarded forms. Every top-level value carries the line it starts on so that
//! importers can name the line of a malformed op. Nesting is limited (`MAX_NESTING_DEPTH`) so
//! hostile input cannot overflow the stack; the reader never panics on any input.

use std::fmt;

/// Deepest nesting of collections accepted.
pub const MAX_NESTING_DEPTH: usize = 128;

#[derive(Clone, Debug, PartialEq)]
pub enum Edn {
    Nil,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Char(char),
    /// Without the leading colon.
    Keyword(String),
    Symbol(String),
    List(Vec<Edn>),
    Vector(Vec<Edn>),
    Set(Vec<Edn>),
    Map(Vec<(Edn, Edn)>),
    Tagged(String, Box<Edn>),
}

impl Edn {
    /// Looks up a keyword key in a map.
    pub fn get(&self, keyword: &str) -> Option<&Edn> {
        match self {
            Edn::Map(entries) => entries
                .iter()
                .find(|(k, _)| matches!(k, Edn::Keyword(name) if name == keyword))
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// Elements of a list, vector or set.
    pub fn as_seq(&self) -> Option<&[Edn]> {
        match self {
            Edn::List(items) | Edn::Vector(items) | Edn::Set(items) => Some(items),
            _ => None,
        }
    }
}

impl fmt::Display for Edn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn seq(f: &mut fmt::Formatter<'_>, open: &str, items: &[Edn], close: &str) -> fmt::Result {
            write!(f, "{open}")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    write!(f, " ")?;
                }
                write!(f, "{item}")?;
            }
            write!(f, "{close}")
        }
        match self {
            Edn::Nil => write!(f, "nil"),
            Edn::Bool(b) => write!(f, "{b}"),
            Edn::Int(i) => write!(f, "{i}"),
            Edn::Float(x) => write!(f, "{x}"),
            Edn::Str(s) => write!(f, "{s:?}"),
            Edn::Char(c) => write!(f, "\\{c}"),
            Edn::Keyword(k) => write!(f, ":{k}"),
            Edn::Symbol(s) => write!(f, "{s}"),
            Edn::List(items) => seq(f, "(", items, ")"),
            Edn::Vector(items) => seq(f, "[", items, "]"),
            Edn::Set(items) => seq(f, "#{", items, "}"),
            Edn::Map(entries) => {
                write!(f, "{{")?;
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{k} {v}")?;
                }
                write!(f, "}}")
            }
            Edn::Tagged(tag, value) => write!(f, "#{tag} {value}"),
        }
    }
}

/// A syntax error at a line (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct EdnError {
    pub line: usize,
    pub message: String,
}

/// Reads every top-level value of `text`, each with the line it starts on.
pub fn parse_all(text: &str) -> Result<Vec<(usize, Edn)>, EdnError> {
    let mut reader = Reader {
        chars: text.chars().collect(),
        pos: 0,
        line: 1,
    };
    let mut values = Vec::new();
    loop {
        reader.skip_ignored(0)?;
        if reader.peek().is_none() {
            return Ok(values);
        }
        let line = reader.line;
        values.push((line, reader.value(0)?));
    }
}

/// Reads a Jepsen-style file of ops: either one top-level vector/list (its items are returned,
/// each with the line it starts on) or a sequence of top-level values (one map per line).
pub fn parse_items(text: &str) -> Result<Vec<(usize, Edn)>, EdnError> {
    let mut reader = Reader {
        chars: text.chars().collect(),
        pos: 0,
        line: 1,
    };
    reader.skip_ignored(0)?;
    let close = match reader.peek() {
        Some('[') => ']',
        Some('(') => ')',
        _ => return parse_all(text),
    };
    reader.bump();
    let mut items = Vec::new();
    loop {
        reader.skip_ignored(1)?;
        match reader.peek() {
            None => return reader.error(format!("expected '{close}', found end of input")),
            Some(c) if c == close => {
                reader.bump();
                break;
            }
            Some(_) => {
                let line = reader.line;
                items.push((line, reader.value(1)?));
            }
        }
    }
    reader.skip_ignored(0)?;
    if reader.peek().is_some() {
        return reader.error("expected end of input after the top-level collection");
    }
    Ok(items)
}

struct Reader {
    chars: Vec<char>,
    pos: usize,
    line: usize,
}

fn is_delimiter(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | '(' | ')' | '[' | ']' | '{' | '}' | '"' | ';')
}

impl Reader {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.pos + offset).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        if c == '\n' {
            self.line += 1;
        }
        Some(c)
    }

    fn error<T>(&self, message: impl Into<String>) -> Result<T, EdnError> {
        Err(EdnError {
            line: self.line,
            message: message.into(),
        })
    }

    /// Skips whitespace, commas, comments and `#_` discarded forms.
    fn skip_ignored(&mut self, depth: usize) -> Result<(), EdnError> {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() || c == ',' => {
                    self.bump();
                }
                Some(';') => {
                    while let Some(c) = self.bump() {
                        if c == '\n' {
                            break;
                        }
                    }
                }
                Some('#') if self.peek_at(1) == Some('_') => {
                    self.pos += 2;
                    self.skip_ignored(depth)?;
                    self.value(depth)?;
                }
                _ => return Ok(()),
            }
        }
    }

    fn value(&mut self, depth: usize) -> Result<Edn, EdnError> {
        if depth > MAX_NESTING_DEPTH {
            return self.error(format!(
                "expected at most {MAX_NESTING_DEPTH} nested collections"
            ));
        }
        self.skip_ignored(depth)?;
        let Some(c) = self.peek() else {
            return self.error("expected a value, found end of input");
        };
        match c {
            '(' => {
                self.bump();
                Ok(Edn::List(self.items(')', depth)?))
            }
            '[' => {
                self.bump();
                Ok(Edn::Vector(self.items(']', depth)?))
            }
            '{' => {
                self.bump();
                let line = self.line;
                let items = self.items('}', depth)?;
                if items.len() % 2 != 0 {
                    return Err(EdnError {
                        line,
                        message: "expected a map with an even number of forms".into(),
                    });
                }
                let mut entries = Vec::with_capacity(items.len() / 2);
                let mut iter = items.into_iter();
                while let (Some(k), Some(v)) = (iter.next(), iter.next()) {
                    entries.push((k, v));
                }
                Ok(Edn::Map(entries))
            }
            '#' => self.dispatch(depth),
            '"' => self.string(),
            '\\' => self.character(),
            ')' | ']' | '}' => self.error(format!("unexpected '{c}'")),
            _ => self.atom(),
        }
    }

    fn items(&mut self, close: char, depth: usize) -> Result<Vec<Edn>, EdnError> {
        let mut items = Vec::new();
        loop {
            self.skip_ignored(depth + 1)?;
            match self.peek() {
                None => return self.error(format!("expected '{close}', found end of input")),
                Some(c) if c == close => {
                    self.bump();
                    return Ok(items);
                }
                Some(_) => items.push(self.value(depth + 1)?),
            }
        }
    }

    fn dispatch(&mut self, depth: usize) -> Result<Edn, EdnError> {
        self.bump(); // '#'
        match self.peek() {
            Some('{') => {
                self.bump();
                Ok(Edn::Set(self.items('}', depth)?))
            }
            Some(c) if !is_delimiter(c) => {
                let tag = self.token();
                let value = self.value(depth + 1)?;
                Ok(Edn::Tagged(tag, Box::new(value)))
            }
            _ => self.error("expected a set #{...} or a tagged literal after '#'"),
        }
    }

    fn token(&mut self) -> String {
        let mut token = String::new();
        while let Some(c) = self.peek() {
            if is_delimiter(c) {
                break;
            }
            token.push(c);
            self.bump();
        }
        token
    }

    fn string(&mut self) -> Result<Edn, EdnError> {
        self.bump(); // opening quote
        let mut s = String::new();
        loop {
            match self.bump() {
                None => return self.error("expected a closing '\"', found end of input"),
                Some('"') => return Ok(Edn::Str(s)),
                Some('\\') => match self.bump() {
                    Some('n') => s.push('\n'),
                    Some('t') => s.push('\t'),
                    Some('r') => s.push('\r'),
                    Some('"') => s.push('"'),
                    Some('\\') => s.push('\\'),
                    Some(other) => s.push(other),
                    None => return self.error("expected an escaped character, found end of input"),
                },
                Some(c) => s.push(c),
            }
        }
    }

    fn character(&mut self) -> Result<Edn, EdnError> {
        self.bump(); // backslash
        let Some(first) = self.bump() else {
            return self.error("expected a character after '\\'");
        };
        let mut name = first.to_string();
        while let Some(c) = self.peek() {
            if is_delimiter(c) {
                break;
            }
            name.push(c);
            self.bump();
        }
        let c = match name.as_str() {
            "newline" => '\n',
            "space" => ' ',
            "tab" => '\t',
            "return" => '\r',
            _ if name.chars().count() == 1 => first,
            _ => return self.error(format!("expected a character, found \\{name}")),
        };
        Ok(Edn::Char(c))
    }

    fn atom(&mut self) -> Result<Edn, EdnError> {
        let token = self.token();
        if token.is_empty() {
            return self.error("expected a value");
        }
        match token.as_str() {
            "nil" => return Ok(Edn::Nil),
            "true" => return Ok(Edn::Bool(true)),
            "false" => return Ok(Edn::Bool(false)),
            _ => {}
        }
        if let Some(keyword) = token.strip_prefix(':') {
            if keyword.is_empty() {
                return self.error("expected a keyword name after ':'");
            }
            return Ok(Edn::Keyword(keyword.to_string()));
        }
        let first = token.chars().next().unwrap_or(' ');
        let second = token.chars().nth(1);
        let numeric = first.is_ascii_digit()
            || ((first == '-' || first == '+') && second.is_some_and(|c| c.is_ascii_digit()));
        if numeric {
            return self.number(&token);
        }
        Ok(Edn::Symbol(token))
    }

    fn number(&self, token: &str) -> Result<Edn, EdnError> {
        let integer = token.strip_suffix('N').unwrap_or(token);
        if let Ok(i) = integer.parse::<i64>() {
            return Ok(Edn::Int(i));
        }
        let float = token.strip_suffix('M').unwrap_or(token);
        if float.contains(['.', 'e', 'E']) {
            if let Ok(x) = float.parse::<f64>() {
                return Ok(Edn::Float(x));
            }
        }
        self.error(format!(
            "expected a number that fits in 64 bits, found {token:?}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_jepsen_op_maps_with_comments_and_tags() {
        let text = "; a comment\n[{:process 4, :type :invoke, :f :cas, :value [0 2], :time 123}\n \
                    {:type :info :process :nemesis :f :start :value #inst \"2017\" :error [:x nil]}\n \
                    #_ {:ignored 1} {:s #{1 2} :neg -3 :big 3N :str \"a\\\"b\" :c \\a}]";
        let values = parse_all(text).unwrap();
        assert_eq!(values.len(), 1);
        let items = values[0].1.as_seq().unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].get("process"), Some(&Edn::Int(4)));
        assert_eq!(
            items[0].get("value"),
            Some(&Edn::Vector(vec![Edn::Int(0), Edn::Int(2)]))
        );
        assert_eq!(
            items[1].get("process"),
            Some(&Edn::Keyword("nemesis".into()))
        );
        assert!(matches!(items[1].get("value"), Some(Edn::Tagged(t, _)) if t == "inst"));
        assert_eq!(
            items[2].get("s"),
            Some(&Edn::Set(vec![Edn::Int(1), Edn::Int(2)]))
        );
        assert_eq!(items[2].get("neg"), Some(&Edn::Int(-3)));
        assert_eq!(items[2].get("big"), Some(&Edn::Int(3)));
        assert_eq!(items[2].get("str"), Some(&Edn::Str("a\"b".into())));
        assert_eq!(items[2].get("c"), Some(&Edn::Char('a')));
    }

    #[test]
    fn one_map_per_line_keeps_line_numbers() {
        let values = parse_all("{:a 1}\n\n{:b 2}\n; c\n{:c 3}").unwrap();
        let lines: Vec<usize> = values.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![1, 3, 5]);
    }

    #[test]
    fn errors_name_line_and_expectation() {
        let err = parse_all("{:a 1}\n{:b 2").unwrap_err();
        assert_eq!(err.line, 2);
        assert!(err.message.contains("expected '}'"), "{err}");
        let err = parse_all("{:a}").unwrap_err();
        assert!(err.message.contains("even number"), "{err}");
        let err = parse_all("[1 2]]").unwrap_err();
        assert!(err.message.contains("unexpected ']'"), "{err}");
        let err = parse_all("99999999999999999999999").unwrap_err();
        assert!(err.message.contains("64 bits"), "{err}");
        let deep = "[".repeat(MAX_NESTING_DEPTH + 10);
        assert!(parse_all(&deep).is_err());
    }
}
