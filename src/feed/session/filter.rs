//! Which readings of a dataset a session wants: some sensors, readings within a box, parsed
//! from `sensors=a,b` and `bbox=minlon,minlat,maxlon,maxlat`.

use std::collections::HashSet;

use crate::model::Reading;

/// Which readings of a dataset a session wants.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Filter {
    pub sensors: Option<HashSet<String>>,
    /// min lon, min lat, max lon, max lat.
    pub bbox: Option<[f64; 4]>,
}

impl Filter {
    /// From `sensors=a,b` and `bbox=minlon,minlat,maxlon,maxlat`.
    pub fn parse(sensors: Option<&str>, bbox: Option<&str>) -> Result<Filter, String> {
        let sensors = match sensors {
            Some(s) => {
                let set: HashSet<String> = s
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect();
                if set.is_empty() {
                    return Err("sensors: name at least one sensor id".into());
                }
                Some(set)
            }
            None => None,
        };
        let bbox = match bbox {
            Some(b) => {
                let v: Vec<f64> = b
                    .split(',')
                    .map(|x| x.trim().parse::<f64>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| format!("bbox: `{b}` is not four numbers"))?;
                let [min_lon, min_lat, max_lon, max_lat] = v[..] else {
                    return Err(format!(
                        "bbox: `{b}` is not min_lon,min_lat,max_lon,max_lat"
                    ));
                };
                let ok = (-180.0..=180.0).contains(&min_lon)
                    && (-180.0..=180.0).contains(&max_lon)
                    && (-90.0..=90.0).contains(&min_lat)
                    && (-90.0..=90.0).contains(&max_lat)
                    && min_lon <= max_lon
                    && min_lat <= max_lat;
                if !ok {
                    return Err(format!(
                        "bbox: `{b}` is not min_lon,min_lat,max_lon,max_lat within the globe"
                    ));
                }
                Some([min_lon, min_lat, max_lon, max_lat])
            }
            None => None,
        };
        Ok(Filter { sensors, bbox })
    }

    pub fn matches(&self, r: &Reading) -> bool {
        if let Some(s) = &self.sensors
            && !s.contains(r.sensor_id.as_str())
        {
            return false;
        }
        if let Some([min_lon, min_lat, max_lon, max_lat]) = self.bbox {
            let (Some(lat), Some(lon)) = (r.lat, r.lon) else {
                return false;
            };
            return (min_lon..=max_lon).contains(&lon) && (min_lat..=max_lat).contains(&lat);
        }
        true
    }
}
