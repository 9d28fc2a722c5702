//! `loaderctl mount add|rm|ls`.

use std::collections::BTreeMap;

use loaderd_proto::v1 as pb;

use crate::cli::MountCmd;
use crate::client::Client;
use crate::{parse_options, rpc_err};

pub(crate) async fn mount(c: &mut Client, cmd: MountCmd) -> anyhow::Result<()> {
    match cmd {
        MountCmd::Add { path, uri, options } => {
            let m = c
                .mount_add(pb::MountAddRequest {
                    path,
                    uri,
                    options: parse_options(&options)?.into_iter().collect(),
                })
                .await
                .map_err(rpc_err)?
                .into_inner();
            println!("mounted {} -> {}", m.path, m.uri);
        }
        MountCmd::Rm { path } => {
            c.mount_remove(pb::MountRemoveRequest { path: path.clone() })
                .await
                .map_err(rpc_err)?;
            println!("unmounted {path}");
        }
        MountCmd::Ls => {
            let r = c
                .mount_list(pb::MountListRequest {})
                .await
                .map_err(rpc_err)?
                .into_inner();
            for m in r.mounts {
                let opts: BTreeMap<_, _> = m.options.into_iter().collect();
                let opts: Vec<String> = opts.iter().map(|(k, v)| format!("{k}={v}")).collect();
                println!("{} -> {} {}", m.path, m.uri, opts.join(","));
            }
        }
    }
    Ok(())
}
