//! What a PromQL expression reads: the metric names with their label matchers, and the label
//! names it groups or matches on. Enough of PromQL's lexical grammar to check that dashboards
//! and rules only use metrics and labels the daemon exports; Prometheus itself (promtool, the
//! server) checks the syntax.

/// One vector selector: `name{label op "value", ...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<Matcher>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    pub label: String,
    pub operator: String,
    pub value: String,
}

/// The names an expression uses.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Usage {
    pub selectors: Vec<Selector>,
    /// Labels in `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`.
    pub grouping_labels: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Identifier(String),
    String(String),
    /// Numbers and durations (`5m`, `0.99`, `1e3`).
    Number,
    Punctuation(String),
}

const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
];
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Grafana's interval macros, as a duration PromQL accepts.
pub fn expand_grafana_macros(expression: &str) -> String {
    expression
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
}

pub fn analyze(expression: &str) -> Result<Usage, String> {
    let tokens = tokenize(expression)?;
    let mut usage = Usage::default();
    let mut at = 0;
    while at < tokens.len() {
        match &tokens[at] {
            Token::Identifier(word) if GROUPING.contains(&word.as_str()) => {
                at += 1;
                if tokens.get(at) == Some(&Token::Punctuation("(".into())) {
                    at += 1;
                    while let Some(token) = tokens.get(at) {
                        at += 1;
                        match token {
                            Token::Identifier(label) => usage.grouping_labels.push(label.clone()),
                            Token::Punctuation(comma) if comma == "," => {}
                            Token::Punctuation(close) if close == ")" => break,
                            other => return Err(format!("unexpected {other:?} in a label list")),
                        }
                    }
                }
            }
            Token::Identifier(word) if KEYWORDS.contains(&word.as_str()) => at += 1,
            Token::Identifier(word) => {
                at += 1;
                // A function or an aggregation (`sum (`, `sum by (`): not a metric.
                let next = tokens.get(at);
                if next == Some(&Token::Punctuation("(".into()))
                    || next == Some(&Token::Identifier("by".into()))
                    || next == Some(&Token::Identifier("without".into()))
                {
                    continue;
                }
                let mut selector = Selector {
                    metric: word.clone(),
                    matchers: Vec::new(),
                };
                if tokens.get(at) == Some(&Token::Punctuation("{".into())) {
                    at += 1;
                    let (matchers, next) = matchers(&tokens, at)?;
                    selector.matchers = matchers;
                    at = next;
                }
                usage.selectors.push(selector);
            }
            Token::Punctuation(open) if open == "{" => {
                return Err("selectors without a metric name are not checked: name it".into());
            }
            _ => at += 1,
        }
    }
    Ok(usage)
}

fn matchers(tokens: &[Token], mut at: usize) -> Result<(Vec<Matcher>, usize), String> {
    let mut out = Vec::new();
    loop {
        match tokens.get(at) {
            Some(Token::Punctuation(close)) if close == "}" => return Ok((out, at + 1)),
            Some(Token::Punctuation(comma)) if comma == "," => at += 1,
            Some(Token::Identifier(label)) => {
                let Some(Token::Punctuation(operator)) = tokens.get(at + 1) else {
                    return Err(format!("no operator after label {label}"));
                };
                let Some(Token::String(value)) = tokens.get(at + 2) else {
                    return Err(format!("no value after {label}{operator}"));
                };
                if !matches!(operator.as_str(), "=" | "!=" | "=~" | "!~") {
                    return Err(format!("bad matcher operator {operator}"));
                }
                out.push(Matcher {
                    label: label.clone(),
                    operator: operator.clone(),
                    value: value.clone(),
                });
                at += 3;
            }
            other => return Err(format!("unexpected {other:?} in a selector")),
        }
    }
}

fn tokenize(expression: &str) -> Result<Vec<Token>, String> {
    let characters: Vec<char> = expression.chars().collect();
    let mut tokens = Vec::new();
    let mut at = 0;
    while at < characters.len() {
        let character = characters[at];
        if character.is_whitespace() {
            at += 1;
        } else if character == '#' {
            while at < characters.len() && characters[at] != '\n' {
                at += 1;
            }
        } else if character.is_ascii_alphabetic() || character == '_' {
            let start = at;
            while at < characters.len()
                && (characters[at].is_ascii_alphanumeric() || matches!(characters[at], '_' | ':'))
            {
                at += 1;
            }
            tokens.push(Token::Identifier(characters[start..at].iter().collect()));
        } else if character.is_ascii_digit()
            || character == '.' && characters.get(at + 1).is_some_and(char::is_ascii_digit)
        {
            while at < characters.len()
                && (characters[at].is_ascii_alphanumeric() || characters[at] == '.')
            {
                at += 1;
            }
            tokens.push(Token::Number);
        } else if matches!(character, '"' | '\'' | '`') {
            let quote = character;
            at += 1;
            let mut value = String::new();
            while at < characters.len() && characters[at] != quote {
                if characters[at] == '\\' && quote != '`' {
                    at += 1;
                }
                if let Some(&escaped) = characters.get(at) {
                    value.push(escaped);
                }
                at += 1;
            }
            if at >= characters.len() {
                return Err(format!("unterminated string in {expression}"));
            }
            at += 1;
            tokens.push(Token::String(value));
        } else {
            let two: String = characters[at..(at + 2).min(characters.len())]
                .iter()
                .collect();
            let operator = if matches!(two.as_str(), "=~" | "!~" | "!=" | "==" | ">=" | "<=") {
                two
            } else {
                character.to_string()
            };
            at += operator.chars().count();
            tokens.push(Token::Punctuation(operator));
        }
    }
    Ok(tokens)
}
