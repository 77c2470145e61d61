//! [`RequestObjects`]: shared objects a request hands to custom processors (a grammar matcher,
//! a compiled regex), beside the plain values of [`RequestParams::extra`](crate::RequestParams::extra).

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::ParamsError;

/// One stored object and the name of its type (for messages).
#[derive(Clone)]
struct Entry {
    object: Arc<dyn Any + Send + Sync>,
    type_name: &'static str,
}

/// Named, shared objects of any type, for custom processors: vLLM's per-request objects
/// (a grammar matcher, a compiled regex, a lookup table) that do not fit
/// [`ExtraArg`](crate::ExtraArg)'s plain values.
///
/// Each entry is an `Arc<T>` for any `T: Send + Sync + 'static`, read back with its type by
/// [`get`](Self::get). The objects are shared, not copied: cloning the parameters clones the
/// `Arc`s, and two maps are equal when they hold the *same* objects (pointer equality) under
/// the same names. An object the engine keeps changing (a matcher it advances each step) needs
/// its own interior mutability (`Mutex`, atomics).
///
/// Usually reached through [`RequestParams::with_object`](crate::RequestParams::with_object)
/// and [`RequestParams::object`](crate::RequestParams::object).
///
/// # Example
///
/// ```
/// use std::sync::Arc;
/// use logits_processors::{ParamsError, RequestObjects};
///
/// struct Grammar { allowed: Vec<u32> }
///
/// let mut objects = RequestObjects::new();
/// let grammar = Arc::new(Grammar { allowed: vec![3, 4] });
/// objects.insert("grammar", grammar.clone());
///
/// let got = objects.get::<Grammar>("grammar")?.expect("present");
/// assert!(Arc::ptr_eq(&got, &grammar)); // the same object, not a copy
/// assert_eq!(got.allowed, [3, 4]);
/// assert!(objects.get::<Grammar>("regex")?.is_none());
/// // Asking for the wrong type is an error naming both types.
/// assert!(matches!(
///     objects.get::<String>("grammar"),
///     Err(ParamsError::ObjectType { expected: "alloc::string::String", .. })
/// ));
/// # Ok::<(), ParamsError>(())
/// ```
#[derive(Clone, Default)]
pub struct RequestObjects(BTreeMap<String, Entry>);

impl RequestObjects {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `object` under `name`, replacing any earlier entry of that name.
    ///
    /// Cost: O(log n) and one allocation for the name.
    pub fn insert<T: Any + Send + Sync>(&mut self, name: impl Into<String>, object: Arc<T>) {
        let entry = Entry {
            object,
            type_name: std::any::type_name::<T>(),
        };
        self.0.insert(name.into(), entry);
    }

    /// The object stored under `name`, if any, as an `Arc<T>` (a clone of the stored `Arc`:
    /// no copy of the object, no allocation).
    ///
    /// # Errors
    ///
    /// [`ParamsError::ObjectType`] when the object under `name` is not a `T`: reject the
    /// request (the client sent the wrong kind of object).
    pub fn get<T: Any + Send + Sync>(&self, name: &str) -> Result<Option<Arc<T>>, ParamsError> {
        let Some(entry) = self.0.get(name) else {
            return Ok(None);
        };
        match Arc::clone(&entry.object).downcast::<T>() {
            Ok(object) => Ok(Some(object)),
            Err(_) => Err(ParamsError::ObjectType {
                name: name.to_owned(),
                expected: std::any::type_name::<T>(),
                found: entry.type_name,
            }),
        }
    }

    /// Whether an object is stored under `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// The names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.keys().map(String::as_str)
    }

    /// The number of objects.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for RequestObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, e)| (k, e.type_name)))
            .finish()
    }
}

/// Same names holding the same objects (pointer equality).
impl PartialEq for RequestObjects {
    fn eq(&self, other: &Self) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(&other.0)
                .all(|((ka, a), (kb, b))| ka == kb && Arc::ptr_eq(&a.object, &b.object))
    }
}
