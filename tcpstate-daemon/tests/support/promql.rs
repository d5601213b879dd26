//! What a PromQL expression reads, from the syntax tree of the `promql-parser` crate: the metric
//! names with their label matchers, and the label names it groups or matches on. Enough to check
//! that dashboards and rules only use metrics and labels the daemon exports; an expression that
//! does not parse is an error.

use promql_parser::{
    label::MatchOp,
    parser::{self, BinModifier, Expr, LabelModifier, VectorMatchCardinality, VectorSelector},
};

/// One vector selector: `name{label op "value", ...}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Selector {
    pub metric: String,
    pub matchers: Vec<Matcher>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    pub label: String,
    /// `=`, `!=`, `=~` or `!~`.
    pub operator: String,
    pub value: String,
}

/// The names an expression uses, in the order they are written.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Usage {
    pub selectors: Vec<Selector>,
    /// Labels in `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`.
    pub grouping_labels: Vec<String>,
}

/// Grafana's interval macros, as a duration PromQL accepts.
pub fn expand_grafana_macros(expression: &str) -> String {
    expression
        .replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
}

pub fn analyze(expression: &str) -> Result<Usage, String> {
    let tree = parser::parse(expression)?;
    let mut usage = Usage::default();
    usage.visit(&tree)?;
    Ok(usage)
}

impl Usage {
    /// Walks `expression` in the order it is written: a binary operator's left side, its
    /// modifier, then its right side.
    fn visit(&mut self, expression: &Expr) -> Result<(), String> {
        match expression {
            Expr::Aggregate(aggregate) => {
                if let Some(modifier) = &aggregate.modifier {
                    self.group_by(modifier);
                }
                if let Some(parameter) = &aggregate.param {
                    self.visit(parameter)?;
                }
                self.visit(&aggregate.expr)
            }
            Expr::Binary(binary) => {
                self.visit(&binary.lhs)?;
                if let Some(modifier) = &binary.modifier {
                    self.match_on(modifier);
                }
                self.visit(&binary.rhs)
            }
            Expr::Unary(unary) => self.visit(&unary.expr),
            Expr::Paren(paren) => self.visit(&paren.expr),
            Expr::Subquery(subquery) => self.visit(&subquery.expr),
            Expr::Call(call) => call
                .args
                .args
                .iter()
                .try_for_each(|argument| self.visit(argument)),
            Expr::VectorSelector(selector) => self.select(selector),
            Expr::MatrixSelector(matrix) => self.select(&matrix.vs),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => Ok(()),
        }
    }

    fn select(&mut self, selector: &VectorSelector) -> Result<(), String> {
        let Some(metric) = &selector.name else {
            return Err("selectors without a metric name are not checked: name it".into());
        };
        let every = &selector.matchers;
        let matchers = every
            .matchers
            .iter()
            .chain(every.or_matchers.iter().flatten())
            .map(|matcher| Matcher {
                label: matcher.name.clone(),
                operator: match matcher.op {
                    MatchOp::Equal => "=",
                    MatchOp::NotEqual => "!=",
                    MatchOp::Re(_) => "=~",
                    MatchOp::NotRe(_) => "!~",
                }
                .to_owned(),
                value: matcher.value.clone(),
            })
            .collect();
        self.selectors.push(Selector {
            metric: metric.clone(),
            matchers,
        });
        Ok(())
    }

    fn group_by(&mut self, modifier: &LabelModifier) {
        self.grouping_labels
            .extend(modifier.labels().labels.iter().cloned());
    }

    fn match_on(&mut self, modifier: &BinModifier) {
        if let Some(matching) = &modifier.matching {
            self.group_by(matching);
        }
        if let VectorMatchCardinality::ManyToOne(labels)
        | VectorMatchCardinality::OneToMany(labels) = &modifier.card
        {
            self.grouping_labels.extend(labels.labels.iter().cloned());
        }
    }
}
