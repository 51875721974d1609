//! Plans: the common expressions evaluated over the inputs where they are.
//!
//! The interpreter copies every variable into its own representation for each request and
//! copies values again at each function call; most of a cached check with a condition went
//! there. Most conditions platform teams write only compare strings, look into claim lists,
//! test prefixes and combine the results:
//!
//! ```text
//! request.headers['x-tenant'] in claims.tenants && ('admin' in claims.roles || …)
//! ```
//!
//! Such an expression gets a [`Plan`] when the policy compiles: the same tree, over values
//! that borrow the claims, headers and query parameters ([`V`]). A plan covers literals,
//! field and index access, `has()`, the logical, comparison, `in` and `+` operators, `size`,
//! `startsWith`, `endsWith`, `contains`, `split`, `matches` and the list macros (`exists`,
//! `all`, `exists_one`, `map`, `filter`). An expression using anything else has no plan and
//! the interpreter runs it.
//!
//! A plan never decides what the interpreter would decide otherwise. It gives up (and the
//! interpreter evaluates the expression) on anything whose outcome depends on the
//! interpreter's conventions rather than on plain values: an error of any kind (a missing
//! key, an out-of-range index, an overflow), values of two different types meeting in `==`,
//! `<` or `in`, doubles, iteration over a map (the interpreter's order is its own), a result
//! that is not of the expression's kind. In debug builds (every test) both run on every
//! evaluation and must agree, and a property test compares them on random expressions and
//! inputs.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::rc::Rc;

use kube_cel::cel::common::ast::{Expr, IdedExpr, LiteralValue, operators};

use super::{Inputs, limits};

/// An expression as a plan evaluates it.
#[derive(Debug)]
pub(crate) enum Plan {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Str(String),
    Null,
    List(Vec<Plan>),
    /// `claims`, `request`, `source`.
    Root(Root),
    /// A comprehension's variable.
    Var(String),
    /// `x.f`
    Field(Box<Plan>, String),
    /// `has(x.f)`
    Has(Box<Plan>, String),
    /// `x[k]`
    Index(Box<Plan>, Box<Plan>),
    And(Box<Plan>, Box<Plan>),
    Or(Box<Plan>, Box<Plan>),
    Not(Box<Plan>),
    /// `!(x)` that is true unless `x` is false (the list macros' loop condition).
    NotStrictlyFalse(Box<Plan>),
    Cond(Box<Plan>, Box<Plan>, Box<Plan>),
    Eq(Box<Plan>, Box<Plan>),
    Ne(Box<Plan>, Box<Plan>),
    Cmp(Box<Plan>, Box<Plan>, fn(Ordering) -> bool),
    In(Box<Plan>, Box<Plan>),
    Add(Box<Plan>, Box<Plan>),
    Neg(Box<Plan>),
    Size(Box<Plan>),
    StartsWith(Box<Plan>, Box<Plan>),
    EndsWith(Box<Plan>, Box<Plan>),
    Contains(Box<Plan>, Box<Plan>),
    Split(Box<Plan>, Box<Plan>),
    Matches(Box<Plan>, String),
    Comprehension(Box<Comprehension>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Root {
    Claims,
    Request,
    Source,
}

#[derive(Debug)]
pub(crate) struct Comprehension {
    range: Plan,
    var: String,
    accu: String,
    init: Plan,
    cond: Plan,
    step: Plan,
    result: Plan,
}

/// The plan of an expression, if every operation in it has one.
pub(crate) fn plan(e: &IdedExpr) -> Option<Plan> {
    Planner { vars: Vec::new() }.plan(e)
}

struct Planner {
    /// The comprehension variables in scope.
    vars: Vec<String>,
}

fn boxed(p: Plan) -> Box<Plan> {
    Box::new(p)
}

impl Planner {
    fn plan(&mut self, e: &IdedExpr) -> Option<Plan> {
        Some(match &e.expr {
            Expr::Literal(literal) => match literal {
                LiteralValue::Boolean(b) => Plan::Bool(*b.inner()),
                LiteralValue::Int(i) => Plan::Int(*i.inner()),
                LiteralValue::UInt(u) => Plan::UInt(*u.inner()),
                LiteralValue::String(s) => Plan::Str(s.inner().to_string()),
                LiteralValue::Null => Plan::Null,
                _ => return None,
            },
            Expr::Ident(name) => {
                if self.vars.iter().any(|v| v == name) {
                    Plan::Var(name.clone())
                } else {
                    match name.as_str() {
                        "claims" => Plan::Root(Root::Claims),
                        "request" => Plan::Root(Root::Request),
                        "source" => Plan::Root(Root::Source),
                        _ => return None,
                    }
                }
            }
            Expr::Select(select) => {
                let operand = boxed(self.plan(&select.operand)?);
                if select.test {
                    Plan::Has(operand, select.field.clone())
                } else {
                    Plan::Field(operand, select.field.clone())
                }
            }
            Expr::List(list) if list.optional_indices.is_empty() => Plan::List(
                list.elements
                    .iter()
                    .map(|e| self.plan(e))
                    .collect::<Option<_>>()?,
            ),
            Expr::Call(call) => {
                return self.call(&call.func_name, call.target.as_deref(), &call.args);
            }
            Expr::Comprehension(c) => {
                if c.iter_var2.is_some() {
                    return None;
                }
                let range = self.plan(&c.iter_range)?;
                let init = self.plan(&c.accu_init)?;
                self.vars.push(c.accu_var.clone());
                self.vars.push(c.iter_var.clone());
                let body = (|| Some((self.plan(&c.loop_cond)?, self.plan(&c.loop_step)?)))();
                self.vars.pop();
                let result = self.plan(&c.result);
                self.vars.pop();
                let (cond, step) = body?;
                Plan::Comprehension(Box::new(Comprehension {
                    range,
                    var: c.iter_var.clone(),
                    accu: c.accu_var.clone(),
                    init,
                    cond,
                    step,
                    result: result?,
                }))
            }
            _ => return None,
        })
    }

    fn call(&mut self, name: &str, target: Option<&IdedExpr>, args: &[IdedExpr]) -> Option<Plan> {
        let mut all = Vec::with_capacity(args.len() + 1);
        if let Some(t) = target {
            all.push(t);
        }
        all.extend(args.iter());
        // A method's literal pattern, before the operands are planned.
        if name == "matches" {
            let [this, pattern] = all.as_slice() else {
                return None;
            };
            let Expr::Literal(LiteralValue::String(pattern)) = &pattern.expr else {
                return None;
            };
            return Some(Plan::Matches(
                boxed(self.plan(this)?),
                pattern.inner().to_string(),
            ));
        }
        let mut planned = all
            .iter()
            .map(|e| self.plan(e).map(boxed))
            .collect::<Option<Vec<_>>>()?
            .into_iter();
        let mut next = || planned.next();
        let method = target.is_some();
        Some(match (name, all.len(), method) {
            (operators::LOGICAL_AND, 2, false) => Plan::And(next()?, next()?),
            (operators::LOGICAL_OR, 2, false) => Plan::Or(next()?, next()?),
            (operators::LOGICAL_NOT, 1, false) => Plan::Not(next()?),
            (operators::NOT_STRICTLY_FALSE, 1, false) => Plan::NotStrictlyFalse(next()?),
            (operators::CONDITIONAL, 3, false) => Plan::Cond(next()?, next()?, next()?),
            (operators::EQUALS, 2, false) => Plan::Eq(next()?, next()?),
            (operators::NOT_EQUALS, 2, false) => Plan::Ne(next()?, next()?),
            (operators::LESS, 2, false) => Plan::Cmp(next()?, next()?, Ordering::is_lt),
            (operators::LESS_EQUALS, 2, false) => Plan::Cmp(next()?, next()?, Ordering::is_le),
            (operators::GREATER, 2, false) => Plan::Cmp(next()?, next()?, Ordering::is_gt),
            (operators::GREATER_EQUALS, 2, false) => Plan::Cmp(next()?, next()?, Ordering::is_ge),
            (operators::IN, 2, false) => Plan::In(next()?, next()?),
            (operators::INDEX, 2, false) => Plan::Index(next()?, next()?),
            (operators::ADD, 2, false) => Plan::Add(next()?, next()?),
            (operators::NEGATE, 1, false) => Plan::Neg(next()?),
            ("size", 1, _) => Plan::Size(next()?),
            ("startsWith", 2, true) => Plan::StartsWith(next()?, next()?),
            ("endsWith", 2, true) => Plan::EndsWith(next()?, next()?),
            ("contains", 2, true) => Plan::Contains(next()?, next()?),
            ("split", 2, true) => Plan::Split(next()?, next()?),
            _ => return None,
        })
    }
}

/// A value as a plan sees it: scalars, and containers borrowed from the inputs.
#[derive(Clone, Debug)]
pub(crate) enum V<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Str(Cow<'a, str>),
    /// A list or an object of the claims.
    Json(&'a serde_json::Value),
    /// `claims`, `request`, `source`, `request.headers`, `request.query`.
    Root(Root),
    Headers,
    Query,
    List(Rc<Vec<V<'a>>>),
}

/// The plan cannot decide: the interpreter evaluates the expression.
#[derive(Debug)]
pub(crate) struct GiveUp;

type Out<'a> = Result<V<'a>, GiveUp>;

/// A claim as a plan sees it (the interpreter's conversion of JSON: integers that fit `i64`
/// are ints, other integers uints, other numbers doubles, which plans leave alone).
fn json<'a>(v: &'a serde_json::Value) -> Out<'a> {
    Ok(match v {
        serde_json::Value::Null => V::Null,
        serde_json::Value::Bool(b) => V::Bool(*b),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => V::Int(i),
            (None, Some(u)) => V::UInt(u),
            _ => return Err(GiveUp),
        },
        serde_json::Value::String(s) => V::Str(Cow::Borrowed(s)),
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => V::Json(v),
    })
}

struct Eval<'p> {
    inputs: &'p Inputs<'p>,
    regexes: &'p HashMap<String, regex::Regex>,
    vars: Vec<(&'p str, V<'p>)>,
}

/// Evaluates `plan` over `inputs` (which passed the gate of what the expression reads).
pub(crate) fn eval<'p>(
    plan: &'p Plan,
    inputs: &'p Inputs<'p>,
    regexes: &'p HashMap<String, regex::Regex>,
) -> Out<'p> {
    Eval {
        inputs,
        regexes,
        vars: Vec::new(),
    }
    .eval(plan)
}

fn string<'v, 'a>(v: &'v V<'a>) -> Result<&'v str, GiveUp> {
    match v {
        V::Str(s) => Ok(s),
        _ => Err(GiveUp),
    }
}

fn boolean(v: V<'_>) -> Result<bool, GiveUp> {
    match v {
        V::Bool(b) => Ok(b),
        _ => Err(GiveUp),
    }
}

/// `==` between two scalars of one type; anything else is left to the interpreter.
fn equal(a: &V<'_>, b: &V<'_>) -> Result<bool, GiveUp> {
    Ok(match (a, b) {
        (V::Null, V::Null) => true,
        (V::Bool(a), V::Bool(b)) => a == b,
        (V::Int(a), V::Int(b)) => a == b,
        (V::UInt(a), V::UInt(b)) => a == b,
        (V::Str(a), V::Str(b)) => a == b,
        _ => return Err(GiveUp),
    })
}

impl<'p> Eval<'p> {
    fn eval(&mut self, plan: &'p Plan) -> Out<'p> {
        Ok(match plan {
            Plan::Bool(b) => V::Bool(*b),
            Plan::Int(i) => V::Int(*i),
            Plan::UInt(u) => V::UInt(*u),
            Plan::Str(s) => V::Str(Cow::Borrowed(s)),
            Plan::Null => V::Null,
            Plan::List(items) => V::List(Rc::new(
                items
                    .iter()
                    .map(|i| self.eval(i))
                    .collect::<Result<_, _>>()?,
            )),
            Plan::Root(root) => V::Root(*root),
            Plan::Var(name) => self
                .vars
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
                .ok_or(GiveUp)?,
            Plan::Field(operand, field) => {
                let operand = self.eval(operand)?;
                self.member(&operand, field)?.ok_or(GiveUp)?
            }
            Plan::Has(operand, field) => {
                let operand = self.eval(operand)?;
                match operand {
                    V::Root(Root::Claims) | V::Json(_) | V::Headers | V::Query => {
                        V::Bool(self.member(&operand, field)?.is_some())
                    }
                    _ => return Err(GiveUp),
                }
            }
            Plan::Index(operand, index) => {
                let operand = self.eval(operand)?;
                let index = self.eval(index)?;
                match (&operand, &index) {
                    (V::Json(serde_json::Value::Array(items)), V::Int(i)) => json(
                        items
                            .get(usize::try_from(*i).map_err(|_| GiveUp)?)
                            .ok_or(GiveUp)?,
                    )?,
                    (V::List(items), V::Int(i)) => items
                        .get(usize::try_from(*i).map_err(|_| GiveUp)?)
                        .cloned()
                        .ok_or(GiveUp)?,
                    (V::Root(Root::Claims) | V::Json(_) | V::Headers | V::Query, V::Str(k)) => {
                        self.member(&operand, k)?.ok_or(GiveUp)?
                    }
                    _ => return Err(GiveUp),
                }
            }
            Plan::And(a, b) => {
                if !boolean(self.eval(a)?)? {
                    V::Bool(false)
                } else {
                    V::Bool(boolean(self.eval(b)?)?)
                }
            }
            Plan::Or(a, b) => {
                if boolean(self.eval(a)?)? {
                    V::Bool(true)
                } else {
                    V::Bool(boolean(self.eval(b)?)?)
                }
            }
            Plan::Not(a) => V::Bool(!boolean(self.eval(a)?)?),
            Plan::NotStrictlyFalse(a) => V::Bool(boolean(self.eval(a)?)?),
            Plan::Cond(c, a, b) => {
                if boolean(self.eval(c)?)? {
                    self.eval(a)?
                } else {
                    self.eval(b)?
                }
            }
            Plan::Eq(a, b) => {
                let a = self.eval(a)?;
                V::Bool(equal(&a, &self.eval(b)?)?)
            }
            Plan::Ne(a, b) => {
                let a = self.eval(a)?;
                V::Bool(!equal(&a, &self.eval(b)?)?)
            }
            Plan::Cmp(a, b, holds) => {
                let a = self.eval(a)?;
                let b = self.eval(b)?;
                let order = match (&a, &b) {
                    (V::Int(a), V::Int(b)) => a.cmp(b),
                    (V::UInt(a), V::UInt(b)) => a.cmp(b),
                    (V::Str(a), V::Str(b)) => a.cmp(b),
                    _ => return Err(GiveUp),
                };
                V::Bool(holds(order))
            }
            Plan::In(needle, haystack) => {
                let needle = self.eval(needle)?;
                let haystack = self.eval(haystack)?;
                V::Bool(self.contains(&haystack, &needle)?)
            }
            Plan::Add(a, b) => {
                let a = self.eval(a)?;
                let b = self.eval(b)?;
                match (a, b) {
                    (V::Str(a), V::Str(b)) => {
                        let mut s = String::with_capacity(a.len() + b.len());
                        s.push_str(&a);
                        s.push_str(&b);
                        V::Str(Cow::Owned(s))
                    }
                    (V::Int(a), V::Int(b)) => V::Int(a.checked_add(b).ok_or(GiveUp)?),
                    (V::UInt(a), V::UInt(b)) => V::UInt(a.checked_add(b).ok_or(GiveUp)?),
                    (V::List(a), V::List(b)) => {
                        V::List(Rc::new(a.iter().chain(b.iter()).cloned().collect()))
                    }
                    _ => return Err(GiveUp),
                }
            }
            Plan::Neg(a) => match self.eval(a)? {
                V::Int(i) => V::Int(i.checked_neg().ok_or(GiveUp)?),
                _ => return Err(GiveUp),
            },
            Plan::Size(a) => {
                let n = match self.eval(a)? {
                    // The interpreter's size of a string is its length in bytes.
                    V::Str(s) => s.len(),
                    V::Json(serde_json::Value::Array(items)) => items.len(),
                    V::Json(serde_json::Value::Object(members)) => members.len(),
                    V::List(items) => items.len(),
                    _ => return Err(GiveUp),
                };
                V::Int(i64::try_from(n).map_err(|_| GiveUp)?)
            }
            Plan::StartsWith(a, b) => {
                let a = self.eval(a)?;
                V::Bool(string(&a)?.starts_with(string(&self.eval(b)?)?))
            }
            Plan::EndsWith(a, b) => {
                let a = self.eval(a)?;
                V::Bool(string(&a)?.ends_with(string(&self.eval(b)?)?))
            }
            Plan::Contains(a, b) => {
                let a = self.eval(a)?;
                V::Bool(string(&a)?.contains(string(&self.eval(b)?)?))
            }
            Plan::Split(a, separator) => {
                let a = self.eval(a)?;
                let separator = self.eval(separator)?;
                let (a, separator) = (string(&a)?, string(&separator)?);
                let mut parts = Vec::new();
                for part in a.split(separator) {
                    if parts.len() as u64 >= limits::LIST {
                        return Err(GiveUp);
                    }
                    parts.push(V::Str(Cow::Owned(part.to_string())));
                }
                V::List(Rc::new(parts))
            }
            Plan::Matches(a, pattern) => {
                let a = self.eval(a)?;
                let re = self.regexes.get(pattern).ok_or(GiveUp)?;
                V::Bool(re.is_match(string(&a)?))
            }
            Plan::Comprehension(c) => self.comprehension(c)?,
        })
    }

    fn comprehension(&mut self, c: &'p Comprehension) -> Out<'p> {
        // In the interpreter's order: the accumulator, the range, then per element the loop
        // condition before the element is bound.
        let accu = self.eval(&c.init)?;
        let range = self.eval(&c.range)?;
        let items: Vec<V<'p>> = match &range {
            V::Json(serde_json::Value::Array(items)) => {
                items.iter().map(json).collect::<Result<_, _>>()?
            }
            V::List(items) => items.as_ref().clone(),
            // Maps iterate in the interpreter's own order.
            _ => return Err(GiveUp),
        };
        let depth = self.vars.len();
        self.vars.push((c.accu.as_str(), accu));
        let mut bound = false;
        let result = (|| {
            for item in items {
                if !boolean(self.eval(&c.cond)?)? {
                    break;
                }
                if bound {
                    if let Some(slot) = self.vars.get_mut(depth + 1) {
                        slot.1 = item;
                    }
                } else {
                    self.vars.push((c.var.as_str(), item));
                    bound = true;
                }
                let accu = self.eval(&c.step)?;
                if let Some(slot) = self.vars.get_mut(depth) {
                    slot.1 = accu;
                }
            }
            self.eval(&c.result)
        })();
        self.vars.truncate(depth);
        result
    }

    /// The member `name` of a map-like value, `None` when absent.
    fn member(&self, operand: &V<'p>, name: &str) -> Result<Option<V<'p>>, GiveUp> {
        let inputs = self.inputs;
        Ok(match operand {
            V::Root(Root::Claims) => match &inputs.claims {
                Ok(Some(claims)) => claims.get(name).map(json).transpose()?,
                _ => return Err(GiveUp),
            },
            V::Json(serde_json::Value::Object(members)) => {
                members.get(name).map(json).transpose()?
            }
            V::Root(Root::Request) => {
                let reads = inputs.reads;
                match name {
                    "method" if reads.method => Some(V::Str(Cow::Borrowed(inputs.method))),
                    "host" if reads.host => Some(V::Str(Cow::Borrowed(inputs.host))),
                    "path" if reads.path => Some(V::Str(Cow::Borrowed(inputs.path.ok_or(GiveUp)?))),
                    "headers" if inputs.headers.is_some() => Some(V::Headers),
                    "query" if inputs.query.is_some() => Some(V::Query),
                    _ => return Err(GiveUp),
                }
            }
            V::Root(Root::Source) if inputs.reads.source => match name {
                "address" => Some(V::Str(Cow::Borrowed(inputs.address))),
                "principal" => Some(V::Str(Cow::Borrowed(inputs.principal))),
                _ => return Err(GiveUp),
            },
            V::Headers => inputs
                .headers
                .as_ref()
                .ok_or(GiveUp)?
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| V::Str(Cow::Borrowed(*v))),
            V::Query => inputs
                .query
                .as_ref()
                .ok_or(GiveUp)?
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| V::Str(Cow::Borrowed(v.as_str()))),
            _ => return Err(GiveUp),
        })
    }

    /// `needle in haystack`: membership in a list of values of the needle's type, or a key
    /// of a map.
    fn contains(&self, haystack: &V<'p>, needle: &V<'p>) -> Result<bool, GiveUp> {
        match haystack {
            V::Json(serde_json::Value::Array(items)) => {
                let mut found = false;
                for item in items {
                    // Every element is compared: one of another type leaves the answer to the
                    // interpreter, whatever the others are.
                    found |= equal(&json(item)?, needle)?;
                }
                Ok(found)
            }
            V::List(items) => {
                let mut found = false;
                for item in items.iter() {
                    found |= equal(item, needle)?;
                }
                Ok(found)
            }
            V::Root(Root::Claims)
            | V::Json(serde_json::Value::Object(_))
            | V::Headers
            | V::Query => {
                let V::Str(k) = needle else {
                    return Err(GiveUp);
                };
                Ok(self.member(haystack, k)?.is_some())
            }
            _ => Err(GiveUp),
        }
    }
}
