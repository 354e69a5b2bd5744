//! One watch over several namespaces (`--namespace a,b`): a watch per namespace, merged into a
//! stream that reads like a single watch of their union, so the stores and the index behind it
//! need not know how many namespaces there are.
//!
//! A plain merge would not do: a store treats `Init` … `InitDone` as "this is everything", so
//! namespace `a` relisting would wipe what namespace `b` put there. [`Union`] keeps what each
//! namespace last showed and answers a relist of any one of them with a relist of all of them;
//! the first `InitDone` comes only once every namespace has listed, so "synced" means synced
//! everywhere. Objects are kept once more here, which is why a single namespace (or every
//! namespace) skips the union altogether.

use std::collections::BTreeMap;

use futures::stream::{self, BoxStream, StreamExt};
use kube::runtime::watcher::{self, Event};

/// The merge of several watches' events, one state per watch. Pure: [`Union::handle`] turns
/// one watch's event into the events of the union.
pub struct Union<T> {
    /// Name of an object (unique within one watch).
    name: fn(&T) -> String,
    /// What each watch showed last, by name.
    current: Vec<BTreeMap<String, T>>,
    /// A relist in progress, per watch.
    pending: Vec<Option<BTreeMap<String, T>>>,
    /// Whether each watch has finished a list.
    listed: Vec<bool>,
    /// Whether the union has sent its first `InitDone`.
    started: bool,
}

impl<T: Clone> Union<T> {
    pub fn new(watches: usize, name: fn(&T) -> String) -> Self {
        Self {
            name,
            current: vec![BTreeMap::new(); watches],
            pending: vec![None; watches],
            listed: vec![false; watches],
            started: false,
        }
    }

    /// The union's events for event `event` of watch `i`.
    pub fn handle(&mut self, i: usize, event: Event<T>) -> Vec<Event<T>> {
        match event {
            Event::Init => {
                self.pending[i] = Some(BTreeMap::new());
                Vec::new()
            }
            Event::InitApply(o) => {
                let name = (self.name)(&o);
                self.pending[i]
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, o);
                Vec::new()
            }
            Event::InitDone => {
                self.current[i] = self.pending[i].take().unwrap_or_default();
                self.listed[i] = true;
                if self.listed.iter().all(|l| *l) {
                    self.started = true;
                    self.relist()
                } else {
                    Vec::new()
                }
            }
            Event::Apply(o) => {
                self.current[i].insert((self.name)(&o), o.clone());
                self.pass(Event::Apply(o))
            }
            Event::Delete(o) => {
                self.current[i].remove(&(self.name)(&o));
                self.pass(Event::Delete(o))
            }
        }
    }

    /// A change is passed on once the union has listed; before that it is in the first list.
    fn pass(&self, event: Event<T>) -> Vec<Event<T>> {
        if self.started {
            vec![event]
        } else {
            Vec::new()
        }
    }

    /// Everything every watch shows, as one list.
    fn relist(&self) -> Vec<Event<T>> {
        let objects = self.current.iter().flat_map(|m| m.values().cloned());
        std::iter::once(Event::Init)
            .chain(objects.map(Event::InitApply))
            .chain(std::iter::once(Event::InitDone))
            .collect()
    }
}

/// A watch stream of one namespace (or of all).
pub type WatchStream<T> = BoxStream<'static, Result<Event<T>, watcher::Error>>;

/// One stream for several watches: the only one unchanged, more than one through a [`Union`].
/// Errors pass through as they come.
pub fn union<T>(mut watches: Vec<WatchStream<T>>, name: fn(&T) -> String) -> WatchStream<T>
where
    T: Clone + Send + 'static,
{
    if watches.len() == 1 {
        return watches.remove(0);
    }
    let mut state = Union::new(watches.len(), name);
    let tagged = watches
        .into_iter()
        .enumerate()
        .map(|(i, w)| w.map(move |e| (i, e)).boxed());
    stream::select_all(tagged)
        .flat_map(move |(i, e)| {
            let out: Vec<Result<Event<T>, watcher::Error>> = match e {
                Ok(event) => state.handle(i, event).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            stream::iter(out)
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    type Obj = (&'static str, u32);

    fn name(o: &Obj) -> String {
        o.0.to_string()
    }

    fn shown(events: &[Event<Obj>]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Init => "init".to_string(),
                Event::InitApply(o) => format!("list {}={}", o.0, o.1),
                Event::InitDone => "done".to_string(),
                Event::Apply(o) => format!("apply {}={}", o.0, o.1),
                Event::Delete(o) => format!("delete {}", o.0),
            })
            .collect()
    }

    fn list(u: &mut Union<Obj>, i: usize, objects: &[Obj]) -> Vec<String> {
        let mut out = u.handle(i, Event::Init);
        for o in objects {
            out.extend(u.handle(i, Event::InitApply(*o)));
        }
        out.extend(u.handle(i, Event::InitDone));
        shown(&out)
    }

    #[test]
    fn nothing_is_listed_until_every_watch_has_listed() {
        let mut u = Union::new(2, name);
        assert!(list(&mut u, 0, &[("a", 1)]).is_empty());
        // A change in a listed watch before the union has listed joins the first list.
        assert!(u.handle(0, Event::Apply(("b", 1))).is_empty());
        assert_eq!(
            list(&mut u, 1, &[("c", 1)]),
            ["init", "list a=1", "list b=1", "list c=1", "done"]
        );
    }

    #[test]
    fn a_relist_of_one_watch_keeps_what_the_others_show() {
        let mut u = Union::new(2, name);
        list(&mut u, 0, &[("a", 1), ("gone", 1)]);
        list(&mut u, 1, &[("c", 1)]);
        assert_eq!(shown(&u.handle(1, Event::Apply(("c", 2)))), ["apply c=2"]);
        // Watch 0 comes back without `gone` and with `a` changed; watch 1's latest `c` stays.
        assert_eq!(
            list(&mut u, 0, &[("a", 2)]),
            ["init", "list a=2", "list c=2", "done"]
        );
    }

    #[test]
    fn changes_after_the_first_list_pass_through_and_are_remembered() {
        let mut u = Union::new(2, name);
        list(&mut u, 0, &[("a", 1)]);
        list(&mut u, 1, &[("b", 1)]);
        assert_eq!(shown(&u.handle(0, Event::Delete(("a", 1)))), ["delete a"]);
        assert_eq!(shown(&u.handle(0, Event::Apply(("d", 1)))), ["apply d=1"]);
        assert_eq!(
            list(&mut u, 1, &[("b", 1)]),
            ["init", "list d=1", "list b=1", "done"]
        );
    }

    #[test]
    fn one_name_in_two_watches_is_two_objects() {
        let mut u = Union::new(2, name);
        list(&mut u, 0, &[("same", 1)]);
        assert_eq!(
            list(&mut u, 1, &[("same", 2)]),
            ["init", "list same=1", "list same=2", "done"]
        );
    }

    #[tokio::test]
    async fn the_stream_of_one_watch_is_that_watch() {
        let only: WatchStream<Obj> = stream::iter(vec![
            Ok(Event::Init),
            Ok(Event::InitApply(("a", 1))),
            Ok(Event::InitDone),
        ])
        .boxed();
        let out: Vec<Event<Obj>> = union(vec![only], name)
            .map(|e| e.expect("no error"))
            .collect()
            .await;
        assert_eq!(shown(&out), ["init", "list a=1", "done"]);
    }

    #[tokio::test]
    async fn the_stream_of_two_watches_lists_once_both_have() {
        let w = |o: Obj| -> WatchStream<Obj> {
            stream::iter(vec![
                Ok(Event::Init),
                Ok(Event::InitApply(o)),
                Ok(Event::InitDone),
            ])
            .boxed()
        };
        let out: Vec<Event<Obj>> = union(vec![w(("a", 1)), w(("b", 1))], name)
            .map(|e| e.expect("no error"))
            .collect()
            .await;
        let mut lines = shown(&out);
        assert_eq!(lines.first().map(String::as_str), Some("init"));
        assert_eq!(lines.pop().as_deref(), Some("done"));
        lines.remove(0);
        lines.sort();
        assert_eq!(lines, ["list a=1", "list b=1"]);
    }
}
