//! The Meters by (namespace, hub, serial number), kept from the Meter watch next to the cache.
//!
//! The duplicate-serial checks (a new Meter, a deprovisioning one) used to scan every cached Meter.
//! With 10,000 Meters that is 10,000 comparisons per reconcile and 10^8 per pass over the park,
//! which made the scan the operator's main cost. The index hands out the few Meters that share a
//! serial; the checks then apply their exact rules to those Meters as cached.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, RwLock};

use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;

use crate::crd::meter::Meter;

/// Compact on purpose: a hash of (namespace, hub, serial) to the names holding it, and per Meter
/// the hashes it holds, about 150 bytes per Meter. Hash collisions only add candidates, which the
/// exact checks of the callers drop.
#[derive(Debug, Default)]
struct Index {
    holders: HashMap<u64, Vec<Box<str>>>,
    /// `namespace/name` → the serial hashes it holds (spec, and provisioned when different).
    keys_of: HashMap<Box<str>, Vec<u64>>,
}

fn object_key(meter: &Meter) -> Box<str> {
    format!(
        "{}/{}",
        meter.metadata.namespace.as_deref().unwrap_or_default(),
        meter.metadata.name.as_deref().unwrap_or_default()
    )
    .into_boxed_str()
}

impl Index {
    fn insert(&mut self, state: &RandomState, meter: &Meter) {
        let object = object_key(meter);
        self.remove(&object);
        let namespace = meter.metadata.namespace.as_deref().unwrap_or_default();
        let hub = meter.spec.hub_ref.name.as_str();
        let name: Box<str> = meter.metadata.name.as_deref().unwrap_or_default().into();
        let mut keys = vec![state.hash_one((namespace, hub, meter.spec.serial_number.as_str()))];
        if let Some(provisioned) = meter
            .status
            .as_ref()
            .and_then(|s| s.provisioned_serial_number.as_deref())
            .filter(|p| *p != meter.spec.serial_number)
        {
            keys.push(state.hash_one((namespace, hub, provisioned)));
        }
        for key in &keys {
            self.holders.entry(*key).or_default().push(name.clone());
        }
        self.keys_of.insert(object, keys);
    }

    fn remove(&mut self, object: &str) {
        let Some(keys) = self.keys_of.remove(object) else {
            return;
        };
        let name = object.split_once('/').map(|(_, n)| n).unwrap_or(object);
        for key in keys {
            if let Some(names) = self.holders.get_mut(&key) {
                if let Some(i) = names.iter().position(|n| &**n == name) {
                    names.swap_remove(i);
                }
                if names.is_empty() {
                    self.holders.remove(&key);
                }
            }
        }
    }
}

/// Meters by serial, updated from the same watch events as the Meter cache.
#[derive(Default, Debug)]
pub struct SerialIndex {
    state: RandomState,
    current: RwLock<Index>,
    /// Built during a relist (`Init` … `InitDone`), swapped in when it is complete, so that
    /// readers keep the previous index meanwhile (as the cache does).
    relist: Mutex<Option<Index>>,
}

impl SerialIndex {
    pub fn apply(&self, event: &Event<Meter>) {
        match event {
            Event::Apply(meter) => {
                if let Ok(mut index) = self.current.write() {
                    index.insert(&self.state, meter);
                }
            }
            Event::Delete(meter) => {
                if let Ok(mut index) = self.current.write() {
                    index.remove(&object_key(meter));
                }
            }
            Event::Init => {
                if let Ok(mut relist) = self.relist.lock() {
                    *relist = Some(Index::default());
                }
            }
            Event::InitApply(meter) => {
                if let Ok(mut relist) = self.relist.lock() {
                    relist
                        .get_or_insert_with(Index::default)
                        .insert(&self.state, meter);
                }
            }
            Event::InitDone => {
                let fresh = self.relist.lock().ok().and_then(|mut r| r.take());
                if let (Some(fresh), Ok(mut index)) = (fresh, self.current.write()) {
                    *index = fresh;
                }
            }
        }
    }

    /// The Meters of hub `hub` in `namespace` whose spec serial or provisioned serial is `serial`
    /// (and, rarely, others whose key hashes alike: callers check the fields).
    pub fn holders(&self, namespace: &str, hub: &str, serial: &str) -> Vec<ObjectRef<Meter>> {
        let key = self.state.hash_one((namespace, hub, serial));
        self.current
            .read()
            .ok()
            .and_then(|index| {
                index.holders.get(&key).map(|names| {
                    names
                        .iter()
                        .map(|n| ObjectRef::new(n).within(namespace))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// Number of distinct serial keys, for tests and debugging.
    pub fn len(&self) -> usize {
        self.current.read().map(|i| i.holders.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meter(name: &str, hub: &str, serial: &str, provisioned: Option<&str>) -> Meter {
        let mut m: Meter = serde_json::from_value(json!({
            "apiVersion": "meterpark.io/v1alpha1", "kind": "Meter",
            "metadata": {"name": name, "namespace": "park", "uid": format!("uid-{name}")},
            "spec": {"hubRef": {"name": hub}, "serialNumber": serial, "manufacturer": "L+G",
                     "model": "E450", "protocol": "DLMS/COSEM", "hesId": "hes-1"}
        }))
        .unwrap();
        if let Some(p) = provisioned {
            m.status = Some(serde_json::from_value(json!({"provisionedSerialNumber": p})).unwrap());
        }
        m
    }

    fn names(refs: Vec<ObjectRef<Meter>>) -> Vec<String> {
        let mut n: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        n.sort();
        n
    }

    #[test]
    fn finds_the_meters_sharing_a_serial_in_one_hub_only() {
        let index = SerialIndex::default();
        index.apply(&Event::Apply(meter("a", "hub", "S1", None)));
        index.apply(&Event::Apply(meter("b", "hub", "S1", None)));
        index.apply(&Event::Apply(meter("c", "other", "S1", None)));
        index.apply(&Event::Apply(meter("d", "hub", "S2", None)));
        assert_eq!(names(index.holders("park", "hub", "S1")), ["a", "b"]);
        assert_eq!(names(index.holders("park", "other", "S1")), ["c"]);
        assert!(index.holders("elsewhere", "hub", "S1").is_empty());
    }

    #[test]
    fn a_changed_serial_moves_and_the_provisioned_serial_stays_held() {
        let index = SerialIndex::default();
        index.apply(&Event::Apply(meter("a", "hub", "S1", Some("S1"))));
        // Spec edited after provisioning: both serials are held until the old one is released.
        index.apply(&Event::Apply(meter("a", "hub", "S9", Some("S1"))));
        assert_eq!(names(index.holders("park", "hub", "S1")), ["a"]);
        assert_eq!(names(index.holders("park", "hub", "S9")), ["a"]);
        index.apply(&Event::Apply(meter("a", "hub", "S9", Some("S9"))));
        assert!(index.holders("park", "hub", "S1").is_empty());
        index.apply(&Event::Delete(meter("a", "hub", "S9", Some("S9"))));
        assert!(index.is_empty());
    }

    #[test]
    fn a_relist_replaces_the_index_only_when_complete() {
        let index = SerialIndex::default();
        index.apply(&Event::Apply(meter("gone", "hub", "S1", None)));
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(meter("new", "hub", "S2", None)));
        // Until InitDone, readers see the previous state.
        assert_eq!(names(index.holders("park", "hub", "S1")), ["gone"]);
        index.apply(&Event::InitDone);
        assert!(index.holders("park", "hub", "S1").is_empty());
        assert_eq!(names(index.holders("park", "hub", "S2")), ["new"]);
    }
}
