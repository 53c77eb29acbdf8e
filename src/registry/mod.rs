//! The dataset registry: every dataset citygate takes readings for, and what it keeps about
//! each while running: the schema ([`Dataset`]), the recent rejects its provider reads, its
//! live quality figures and its metrics. Intake looks datasets up here; the sinks, the
//! catalog and the dataset routes read it. A dataset joins while running when a provider
//! creates one over the API; `App` owns that step (register, start its log consumers, let
//! entitlements see it), the same for the config's datasets at start.

pub(crate) mod quality;
pub(crate) mod rejects;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::config::DatasetConfig;
use crate::model::Dataset;
use crate::telemetry::{DatasetMetrics, Metrics};
use quality::QualityTracker;
use rejects::RejectLog;

/// One dataset and what is kept about it while running.
#[derive(Debug)]
pub struct DatasetEntry {
    pub dataset: Arc<Dataset>,
    pub rejects: RejectLog,
    pub metrics: DatasetMetrics,
    pub quality: QualityTracker,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("dataset `{0}` is registered already")]
    Duplicate(String),
}

/// Every dataset by id (cheap reads; adding takes a write lock once per dataset).
#[derive(Debug)]
pub struct Registry {
    datasets: RwLock<HashMap<String, Arc<DatasetEntry>>>,
    metrics: Arc<Metrics>,
    /// Rejects kept per dataset (`pipeline.rejects_kept`).
    rejects_kept: usize,
}

impl Registry {
    pub fn new(metrics: Arc<Metrics>, rejects_kept: usize) -> Registry {
        Registry {
            datasets: RwLock::new(HashMap::new()),
            metrics,
            rejects_kept,
        }
    }

    /// Registers a dataset: its metrics exist from now on. An id already present is an error.
    pub fn add(&self, spec: &DatasetConfig) -> Result<Arc<DatasetEntry>, RegistryError> {
        let mut datasets = self.datasets.write().unwrap_or_else(|e| e.into_inner());
        if datasets.contains_key(&spec.id) {
            return Err(RegistryError::Duplicate(spec.id.clone()));
        }
        let dataset = Arc::new(spec.build());
        let entry = Arc::new(DatasetEntry {
            metrics: self.metrics.dataset(&dataset.id),
            rejects: RejectLog::new(self.rejects_kept),
            quality: QualityTracker::default(),
            dataset,
        });
        datasets.insert(spec.id.clone(), entry.clone());
        Ok(entry)
    }

    /// The metric handles of dataset `id` (the same ones its entry holds).
    pub fn metrics_of(&self, id: &str) -> DatasetMetrics {
        self.metrics.dataset(id)
    }

    pub fn get(&self, id: &str) -> Option<Arc<DatasetEntry>> {
        self.datasets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Every dataset, sorted by id.
    pub fn all(&self) -> Vec<Arc<DatasetEntry>> {
        let mut all: Vec<_> = self
            .datasets
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.dataset.id.cmp(&b.dataset.id));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DEFAULT_CONFIG};

    #[test]
    fn a_dataset_registers_once_and_is_found_by_id() {
        let config = Config::from_toml(DEFAULT_CONFIG, "default", &[]).unwrap();
        let registry = Registry::new(Arc::new(Metrics::new()), 10);
        for spec in &config.datasets {
            registry.add(spec).unwrap();
        }
        assert!(matches!(
            registry.add(&config.datasets[0]),
            Err(RegistryError::Duplicate(_))
        ));
        let ids: Vec<String> = registry
            .all()
            .iter()
            .map(|e| e.dataset.id.clone())
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
        assert_eq!(registry.get("weather").unwrap().dataset.id, "weather");
        assert!(registry.get("nowhere").is_none());
    }
}
