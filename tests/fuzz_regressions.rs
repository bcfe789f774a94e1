//! The fuzz targets' inputs, replayed in the normal suite: the committed seed corpora
//! (`fuzz/seeds/<target>/`, generated from `switchboard::fuzz::seeds` and kept equal to
//! it here) and every input that ever crashed a target (`fuzz/regressions/<target>/`),
//! each through the same harness the fuzzer runs (`switchboard::fuzz`).
//!
//! `SWITCHBOARD_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_regressions` rewrites the seed
//! files after a change of `switchboard::fuzz::seeds`.

use std::path::{Path, PathBuf};

use sha2::Digest;
use switchboard::fuzz::{TARGETS, run, seeds};

fn dir(kind: &str, target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join(kind).join(target)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

#[test]
fn the_committed_seed_corpora_are_the_generated_ones_and_pass() {
    let write = std::env::var_os("SWITCHBOARD_WRITE_FUZZ_SEEDS").is_some();
    for target in TARGETS {
        let seed_dir = dir("seeds", target);
        let expected: Vec<(String, Vec<u8>)> = seeds(target).into_iter().map(|s| (hex::encode(&sha2::Sha256::digest(&s)[..8]), s)).collect();
        if write {
            let _ = std::fs::remove_dir_all(&seed_dir);
            std::fs::create_dir_all(&seed_dir).expect("seed dir");
            for (name, seed) in &expected {
                std::fs::write(seed_dir.join(name), seed).expect("write seed");
            }
        }
        let committed: Vec<String> = files(&seed_dir).iter().filter_map(|p| Some(p.file_name()?.to_str()?.to_owned())).collect();
        let mut names: Vec<String> = expected.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        assert_eq!(committed, names, "fuzz/seeds/{target} differs from switchboard::fuzz::seeds (SWITCHBOARD_WRITE_FUZZ_SEEDS=1 rewrites it)");
        for (name, seed) in &expected {
            assert_eq!(&std::fs::read(seed_dir.join(name)).expect("seed"), seed, "fuzz/seeds/{target}/{name} was edited");
            run(target, seed);
        }
    }
}

#[test]
fn every_input_that_crashed_a_fuzz_target_passes_now() {
    for target in TARGETS {
        for path in files(&dir("regressions", target)) {
            let data = std::fs::read(&path).expect("regression input");
            // A panic names the file through the test's output.
            eprintln!("replaying {}", path.display());
            run(target, &data);
        }
    }
}
