//! One suite of behaviours every backend must show, run against each of them.

use std::sync::Arc;

use super::*;

/// Exercises every operation of a `Store` on an empty store.
pub fn test_suite(store: &dyn Store) {
    get_and_apply(store);
    preconditions_guard_all_writes(store);
    scans_respect_prefix_after_and_limit(store);
    last_finds_the_greatest_key_under_a_prefix(store);
    trees_are_separate(store);
    store.flush().unwrap();
    store.size_on_disk().unwrap();
}

fn get_and_apply(store: &dyn Store) {
    assert_eq!(store.get(Tree::Meta, b"k").unwrap(), None);
    assert!(store.apply(&[], &[(Tree::Meta, b"k", Some(b"v1"))]).unwrap());
    assert_eq!(store.get(Tree::Meta, b"k").unwrap().as_deref(), Some(&b"v1"[..]));
    assert!(store.apply(&[], &[(Tree::Meta, b"k", Some(b"v2"))]).unwrap());
    assert_eq!(store.get(Tree::Meta, b"k").unwrap().as_deref(), Some(&b"v2"[..]));
    assert!(store.apply(&[], &[(Tree::Meta, b"k", None)]).unwrap());
    assert_eq!(store.get(Tree::Meta, b"k").unwrap(), None);
    // Removing what is absent is no error; an empty apply is a no-op.
    assert!(store.apply(&[], &[(Tree::Meta, b"k", None)]).unwrap());
    assert!(store.apply(&[], &[]).unwrap());
}

fn preconditions_guard_all_writes(store: &dyn Store) {
    let writes: [KeyValue<'_>; 3] = [
        (Tree::Entries, b"e1", Some(b"rec")),
        (Tree::BySeq, b"\0\0\0\0\0\0\0\x01", Some(b"e1")),
        (Tree::Meta, b"seq", Some(b"1")),
    ];
    // Absent as expected: everything is written.
    assert!(store.apply(&[(Tree::Entries, b"e1", None), (Tree::Deleted, b"e1", None)], &writes).unwrap());
    assert_eq!(store.get(Tree::BySeq, b"\0\0\0\0\0\0\0\x01").unwrap().as_deref(), Some(&b"e1"[..]));
    // Now present: nothing of a second attempt is written, in any tree.
    let second: [KeyValue<'_>; 2] = [(Tree::Entries, b"e1", Some(b"other")), (Tree::Meta, b"seq", Some(b"2"))];
    assert!(!store.apply(&[(Tree::Entries, b"e1", None)], &second).unwrap());
    assert_eq!(store.get(Tree::Entries, b"e1").unwrap().as_deref(), Some(&b"rec"[..]));
    assert_eq!(store.get(Tree::Meta, b"seq").unwrap().as_deref(), Some(&b"1"[..]));
    // A failing precondition in another tree blocks the write too.
    assert!(
        !store.apply(&[(Tree::Entries, b"e1", Some(b"rec")), (Tree::Deleted, b"e1", Some(b"x"))], &second).unwrap()
    );
    assert_eq!(store.get(Tree::Meta, b"seq").unwrap().as_deref(), Some(&b"1"[..]));
    // Expected values compare by content: remove under a value precondition.
    let removal: [KeyValue<'_>; 2] = [(Tree::Entries, b"e1", None), (Tree::BySeq, b"\0\0\0\0\0\0\0\x01", None)];
    assert!(store.apply(&[(Tree::Entries, b"e1", Some(b"rec"))], &removal).unwrap());
    assert_eq!(store.get(Tree::Entries, b"e1").unwrap(), None);
    assert!(store.is_empty(Tree::BySeq).unwrap());
    assert!(store.apply(&[], &[(Tree::Meta, b"seq", None)]).unwrap());
}

fn scans_respect_prefix_after_and_limit(store: &dyn Store) {
    let keys: Vec<Vec<u8>> = [&b"a"[..], b"ab", b"abc", b"abd", b"ac", b"b", b"\xff", b"\xff\xff", b"\xff\xff\x01"]
        .iter()
        .map(|k| k.to_vec())
        .collect();
    let writes: Vec<KeyValue<'_>> = keys.iter().map(|k| (Tree::ByDataset, k.as_slice(), Some(k.as_slice()))).collect();
    assert!(store.apply(&[], &writes).unwrap());
    let scan = |prefix: &[u8], after: Option<&[u8]>, limit| -> Vec<Vec<u8>> {
        store.scan(Tree::ByDataset, prefix, after, limit).unwrap().into_iter().map(|(k, _)| k).collect()
    };
    let all = scan(b"", None, 100);
    assert_eq!(all, keys, "keys in order");
    assert_eq!(scan(b"ab", None, 100), vec![b"ab".to_vec(), b"abc".to_vec(), b"abd".to_vec()]);
    assert_eq!(scan(b"ab", None, 2), vec![b"ab".to_vec(), b"abc".to_vec()]);
    assert_eq!(scan(b"ab", Some(b"abc"), 100), vec![b"abd".to_vec()]);
    // `after` before the prefix starts at the prefix; past it gives nothing.
    assert_eq!(scan(b"ab", Some(b"a"), 1), vec![b"ab".to_vec()]);
    assert_eq!(scan(b"ab", Some(b"b"), 100), Vec::<Vec<u8>>::new());
    assert_eq!(scan(b"ab", Some(b"abd"), 100), Vec::<Vec<u8>>::new());
    assert_eq!(scan(b"ab", None, 0), Vec::<Vec<u8>>::new());
    // A prefix of 0xff bytes has no upper bound.
    assert_eq!(scan(b"\xff\xff", None, 100), vec![b"\xff\xff".to_vec(), b"\xff\xff\x01".to_vec()]);
    assert_eq!(scan(b"\xff\xff", Some(b"\xff\xff"), 100), vec![b"\xff\xff\x01".to_vec()]);
    assert_eq!(scan(b"zz", None, 100), Vec::<Vec<u8>>::new());
    // Values come with their keys.
    let pairs = store.scan(Tree::ByDataset, b"ac", None, 10).unwrap();
    assert_eq!(pairs, vec![(b"ac".to_vec(), b"ac".to_vec())]);
    assert_eq!(store.len(Tree::ByDataset).unwrap(), keys.len() as u64);
}

fn last_finds_the_greatest_key_under_a_prefix(store: &dyn Store) {
    let last = |prefix: &[u8]| store.last(Tree::ByDataset, prefix).unwrap().map(|(k, _)| k);
    assert_eq!(last(b""), Some(b"\xff\xff\x01".to_vec()));
    assert_eq!(last(b"ab"), Some(b"abd".to_vec()));
    assert_eq!(last(b"a"), Some(b"ac".to_vec()));
    assert_eq!(last(b"\xff"), Some(b"\xff\xff\x01".to_vec()));
    assert_eq!(last(b"c"), None);
    assert_eq!(store.last(Tree::Models, b"").unwrap(), None);
}

fn trees_are_separate(store: &dyn Store) {
    assert!(
        store.apply(&[], &[(Tree::Owners, b"same", Some(b"owner")), (Tree::Models, b"same", Some(b"model"))]).unwrap()
    );
    assert_eq!(store.get(Tree::Owners, b"same").unwrap().as_deref(), Some(&b"owner"[..]));
    assert_eq!(store.get(Tree::Models, b"same").unwrap().as_deref(), Some(&b"model"[..]));
    assert_eq!(store.get(Tree::Blobs, b"same").unwrap(), None);
    assert_eq!(store.len(Tree::Owners).unwrap(), 1);
}

#[test]
fn memory_store_passes_the_suite() {
    test_suite(&MemoryStore::new());
}

#[test]
fn sled_store_passes_the_suite_and_keeps_data_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path(), SledOptions::default()).unwrap();
        test_suite(&store);
        assert!(store.apply(&[], &[(Tree::Blobs, b"kept", Some(b"yes"))]).unwrap());
        store.flush().unwrap();
    }
    // sled releases its lock once its I/O threads are done with the dropped database.
    let store = (0..100)
        .find_map(|_| {
            SledStore::open(dir.path(), SledOptions::default())
                .inspect_err(|_| std::thread::sleep(std::time::Duration::from_millis(50)))
                .ok()
        })
        .unwrap();
    assert_eq!(store.get(Tree::Blobs, b"kept").unwrap().as_deref(), Some(&b"yes"[..]));
    assert_eq!(store.len(Tree::Owners).unwrap(), 1);
}

#[test]
fn concurrent_conditional_inserts_let_exactly_one_win() {
    let dir = tempfile::tempdir().unwrap();
    let stores: [Arc<dyn Store>; 2] =
        [Arc::new(MemoryStore::new()), Arc::new(SledStore::open(dir.path(), SledOptions::default()).unwrap())];
    for store in stores {
        let winners: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8u8)
                .map(|i| {
                    let store = &store;
                    s.spawn(move || {
                        let v = [i];
                        store.apply(&[(Tree::Entries, b"id", None)], &[(Tree::Entries, b"id", Some(&v))]).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| usize::from(h.join().unwrap())).sum()
        });
        assert_eq!(winners, 1);
    }
}

#[test]
fn unknown_engine_names_are_refused_clearly() {
    assert_eq!("sled".parse::<Engine>().unwrap(), Engine::Sled);
    assert_eq!("memory".parse::<Engine>().unwrap(), Engine::Memory);
    let err = "rocksdb".parse::<Engine>().unwrap_err().to_string();
    assert!(err.contains("unknown storage engine \"rocksdb\""), "{err}");
    assert!(err.contains("sled"), "{err}");
}

#[test]
fn prefix_end_skips_saturated_bytes() {
    assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
    assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
    assert_eq!(prefix_end(b"\xff\xff"), None);
    assert_eq!(prefix_end(b""), None);
}
