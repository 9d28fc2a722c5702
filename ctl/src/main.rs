//! `loaderctl`: command-line client of loaderd (see `loaderctl --help`).

fn main() -> anyhow::Result<()> {
    loaderctl::main()
}
