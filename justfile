# Common tasks (just: `pip install rust-just` or `cargo install just`). Each recipe is one plain command.

# Run the operator: embedded store in ./aenv-data, local Docker, API on 127.0.0.1:8080
run *ARGS:
    cargo run --release -p aenv-operator -- serve {{ARGS}}

# Run every test suite (starts what the tests need)
test *ARGS:
    scripts/test {{ARGS}}

# Regenerate crds/ from the Rust types
crds:
    cargo run -q -p aenv-operator -- crds --out-dir crds

# Build the local test image
test-image:
    scripts/build-test-image.sh

fmt:
    cargo fmt --all

lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
