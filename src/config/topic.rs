//! Topic templates of `[[upstream]]`: which topics an upstream subscribes to, and the
//! dataset and sensor each topic names. `city/{dataset}/{sensor_id}` subscribes to `city/+/+`; a topic
//! `city/air-quality/aq-17` then names dataset `air-quality`, sensor `aq-17`.

/// One level of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Level {
    Literal(String),
    /// `+`: any one level, not kept.
    Any,
    Dataset,
    Sensor,
}

/// A parsed `topic` of `[[upstream]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    levels: Vec<Level>,
    /// Ends with `#`: any further levels.
    rest: bool,
}

/// What a topic names.
#[derive(Debug, PartialEq, Eq)]
pub struct Named<'t> {
    pub dataset: Option<&'t str>,
    pub sensor: Option<&'t str>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, String> {
        if text.is_empty() || text.len() > 256 {
            return Err("a topic template is 1-256 characters".into());
        }
        if text.starts_with('$') {
            return Err(format!(
                "`{text}`: name the share group in `share_group`, not in the topic"
            ));
        }
        let mut parts: Vec<&str> = text.split('/').collect();
        let rest = parts.last() == Some(&"#");
        if rest {
            parts.pop();
        }
        let mut levels = Vec::with_capacity(parts.len());
        for part in parts {
            let level = match part {
                "{dataset}" => Level::Dataset,
                "{sensor_id}" => Level::Sensor,
                "+" => Level::Any,
                _ if part.contains(['+', '#', '{', '}', '\0']) => {
                    return Err(format!(
                        "`{text}`: a level is a literal, +, {{dataset}} or {{sensor_id}}, and # comes last"
                    ));
                }
                _ => Level::Literal(part.to_string()),
            };
            if matches!(level, Level::Dataset | Level::Sensor) && levels.contains(&level) {
                return Err(format!("`{text}` names {part} twice"));
            }
            levels.push(level);
        }
        Ok(Template { levels, rest })
    }

    pub fn names_dataset(&self) -> bool {
        self.levels.contains(&Level::Dataset)
    }

    /// The subscription filter: the template with `+` for its names.
    pub fn filter(&self) -> String {
        let mut parts: Vec<&str> = self
            .levels
            .iter()
            .map(|l| match l {
                Level::Literal(text) => text.as_str(),
                _ => "+",
            })
            .collect();
        if self.rest {
            parts.push("#");
        }
        parts.join("/")
    }

    /// What `topic` names, or `None` when it does not fit the template (a broker that
    /// delivers what was not asked for).
    pub fn read<'t>(&self, topic: &'t str) -> Option<Named<'t>> {
        let mut named = Named {
            dataset: None,
            sensor: None,
        };
        let mut parts = topic.split('/');
        for level in &self.levels {
            let part = parts.next()?;
            match level {
                Level::Literal(text) if text != part => return None,
                Level::Dataset => named.dataset = Some(part),
                Level::Sensor => named.sensor = Some(part),
                _ => {}
            }
        }
        (self.rest || parts.next().is_none()).then_some(named)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_subscribes_with_plus_and_reads_its_names() {
        let t = Template::parse("city/{dataset}/{sensor_id}").unwrap();
        assert_eq!(t.filter(), "city/+/+");
        assert_eq!(
            t.read("city/air-quality/aq-17"),
            Some(Named {
                dataset: Some("air-quality"),
                sensor: Some("aq-17")
            })
        );
        assert_eq!(t.read("city/air-quality"), None);
        assert_eq!(t.read("city/air-quality/aq-17/x"), None);
        assert_eq!(t.read("town/air-quality/aq-17"), None);

        let ttn = Template::parse("v3/+/devices/{sensor_id}/up").unwrap();
        assert_eq!(ttn.filter(), "v3/+/devices/+/up");
        assert!(!ttn.names_dataset());
        let named = ttn.read("v3/app@ttn/devices/eui-1/up").unwrap();
        assert_eq!((named.dataset, named.sensor), (None, Some("eui-1")));

        let deep = Template::parse("site/{dataset}/#").unwrap();
        assert_eq!(deep.filter(), "site/+/#");
        assert_eq!(
            deep.read("site/energy/a/b").unwrap().dataset,
            Some("energy")
        );
    }

    #[test]
    fn a_bad_template_says_why() {
        for bad in [
            "",
            "$share/g/city/+",
            "city/#/x",
            "city/{dataset}/{dataset}",
            "city/{nope}",
            "city/a+b",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}
