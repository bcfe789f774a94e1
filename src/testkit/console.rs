//! The console of `switchboard cluster local`: what a person trying a cluster sees and
//! types. It prints every address, process id and secret file at start, reports each
//! process that exits (reaped at once, with the end of its log and the command that
//! restarts it), prints the push notifications the nodes send, and runs typed commands
//! (`status`, `kill`, `stop`, `restart`, `help`, `quit`). The processes themselves are
//! [`super::cluster::LocalCluster`]'s.

use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use super::cluster::{ConsoleCommand, Event, LocalCluster, LocalClusterConfig, LocalClusterError, describe, parse_command, push_receiver, tail};

/// Runs `switchboard cluster local`: starts the cluster, prints what an operator needs,
/// then reports deaths, prints pushes and runs typed commands until Ctrl-C, SIGTERM or
/// `quit`, and stops everything (deleting nothing). `config.push_sink` `print` means: a
/// receiver here, whose notifications are printed. Returns once stopped; stdin may still
/// be read by a blocked thread, so the caller should then exit the process.
pub async fn run(mut config: LocalClusterConfig) -> Result<(), LocalClusterError> {
    let mut pushes = None;
    if config.push_sink == "print" {
        let (url, rx) = push_receiver()?;
        config.push_sink = format!("webhook:{url}");
        pushes = Some(rx);
    }
    let push_sink = config.push_sink.clone();
    let binary = config.binary.clone();
    eprintln!("starting PostgreSQL, Redis and {} nodes in {}…", config.nodes, config.dir.display());
    let mut cluster = LocalCluster::start(config).await?;
    let shown_binary = binary.strip_prefix(std::env::current_dir()?).map(|p| p.to_path_buf()).unwrap_or(binary);
    let b = shown_binary.display();
    println!("local cluster in {} (kept between runs; --fresh starts empty)", cluster.dir.display());
    println!("PostgreSQL  pid {:<8} {}  data {}", pid(cluster.postgres.pid()), cluster.store_url, cluster.postgres.data_dir().display());
    println!("Redis       pid {:<8} {}", pid(cluster.redis.pid()), cluster.redis_url);
    println!(
        "admin token {}   cluster cookie {} (two secrets; nodes read the files)",
        cluster.admin_token_file.display(),
        cluster.cookie_file.display()
    );
    match &pushes {
        Some(_) => println!("pushes      printed here ({push_sink})"),
        None => println!("pushes      {push_sink}"),
    }
    println!();
    print_nodes(&cluster);
    if let Some(first) = cluster.nodes.first() {
        println!("\ntry, in another terminal:");
        println!("  export SWITCHBOARD_ADMIN_URL=http://{} SWITCHBOARD_ADMIN_TOKEN_FILE={}", first.admin, cluster.admin_token_file.display());
        println!("  {b} admin cluster");
        println!("  {b} client register --server http://{} --phone +14155550001", first.http);
        if let Some(last) = cluster.nodes.last() {
            println!("  {b} admin tree --node {}", last.name);
            println!("  {b} admin drain {} --wait", last.name);
        }
    }
    println!(
        "\ntype here: status | kill <node> | stop <node> | restart <node|postgres|redis> | help | quit (or Ctrl-C: stops everything, deletes nothing)"
    );
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            Some(push) = async { match pushes.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                println!(
                    "push: device {} of user {}: {} message(s) in conversation {} from {}",
                    push["device_id"].as_str().unwrap_or("?"),
                    push["user_id"].as_str().unwrap_or("?"),
                    push["count"],
                    push["conversation_id"].as_str().unwrap_or("?"),
                    push["sender_user_id"].as_str().unwrap_or("?"),
                );
            }
            _ = tick.tick() => {
                for event in cluster.reap() {
                    match event {
                        Event::NodeExited { node, pid, status } => {
                            let Some(i) = cluster.node_index(&node) else { continue };
                            let n = &cluster.nodes[i];
                            println!("\n{node} (pid {pid}) {}; reaped. The end of its log ({}):", describe(status), n.log.display());
                            for line in tail(&n.log, 5).lines() {
                                println!("    {line}");
                            }
                            println!("  the others declare it dead after 5 s of silence (`admin cluster` shows it); its devices reconnect elsewhere");
                            println!("  restart it: type `restart {node}` here, or run:\n    {}", cluster.restart_command(i));
                        }
                        Event::PostgresExited(status) => {
                            println!("\nPostgreSQL {}: nothing can be stored until it is back; type `restart postgres`", describe(status));
                        }
                        Event::RedisExited(status) => {
                            println!("\nRedis {}: presence is degraded until it is back; type `restart redis`", describe(status));
                        }
                    }
                }
            }
            line = lines.next_line(), if stdin_open => match line {
                Ok(Some(line)) => {
                    if !console(&mut cluster, parse_command(&line)).await {
                        break;
                    }
                }
                // No terminal (or it closed): keep running until Ctrl-C or SIGTERM.
                _ => stdin_open = false,
            },
        }
    }
    eprintln!("stopping…");
    let foreign = cluster.foreign_nodes();
    cluster.stop();
    for (node, pid) in foreign {
        eprintln!("{node} (pid {pid}) was started outside this command and still runs; it has lost its store (kill {pid})");
    }
    eprintln!("stopped; everything is kept in {}", cluster.dir.display());
    Ok(())
}

/// A process id, or `-`.
fn pid(p: Option<u32>) -> String {
    p.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
}

/// The node table: name, pid (`*`: started by hand), addresses, log.
fn print_nodes(cluster: &LocalCluster) {
    let foreign = cluster.foreign_nodes();
    println!("{:<8} {:<8} {:<16} {:<16} {:<16} {:<16} log", "node", "pid", "tcp", "http/ws", "admin", "cluster");
    for n in &cluster.nodes {
        let state = match (n.pid(), foreign.iter().find(|(name, _)| *name == n.name)) {
            (Some(p), _) => p.to_string(),
            (None, Some((_, p))) => format!("{p}*"),
            (None, None) => "down".into(),
        };
        println!("{:<8} {:<8} {:<16} {:<16} {:<16} {:<16} {}", n.name, state, n.tcp, n.http, n.admin, n.cluster, n.log.display());
    }
    if !foreign.is_empty() {
        println!("* started outside this command (not stopped by it)");
    }
}

/// Runs one typed command; false to stop the cluster.
async fn console(cluster: &mut LocalCluster, command: ConsoleCommand) -> bool {
    let node = |cluster: &LocalCluster, name: &str| {
        let i = cluster.node_index(name);
        if i.is_none() {
            let names: Vec<&str> = cluster.nodes.iter().map(|n| n.name.as_str()).collect();
            println!("no such node {name} (nodes: {})", names.join(", "));
        }
        i
    };
    match command {
        ConsoleCommand::Nothing => {}
        ConsoleCommand::Quit => return false,
        ConsoleCommand::Help => {
            println!("status                 every process, its pid, its addresses");
            println!("kill <node>            SIGKILL it (a crash); its death is reported here");
            println!("stop <node>            SIGTERM it (graceful: hands its conversations and devices over)");
            println!("restart <node>         start it again with the same settings (stopping it first if it runs)");
            println!("restart postgres|redis start the database or Redis again (same data, same port)");
            println!("quit                   stop everything (as Ctrl-C); nothing is deleted");
        }
        ConsoleCommand::Status => {
            println!("PostgreSQL pid {}   Redis pid {}", pid(cluster.postgres.pid()), pid(cluster.redis.pid()));
            print_nodes(cluster);
        }
        ConsoleCommand::Kill(name) | ConsoleCommand::Stop(name) if name == "postgres" || name == "redis" => {
            println!("{name}: only restart is offered here (its data is kept)");
        }
        ConsoleCommand::Kill(name) => {
            if let Some(i) = node(cluster, &name) {
                match cluster.signal_node(i, libc::SIGKILL) {
                    Some(p) => println!("sent SIGKILL to {name} (pid {p})"),
                    None => println!("{name} is not running"),
                }
            }
        }
        ConsoleCommand::Stop(name) => {
            if let Some(i) = node(cluster, &name) {
                match cluster.signal_node(i, libc::SIGTERM) {
                    Some(p) => println!("sent SIGTERM to {name} (pid {p}): it hands its work over, then exits"),
                    None => println!("{name} is not running"),
                }
            }
        }
        ConsoleCommand::Restart(name) if name == "postgres" => match cluster.postgres.restart() {
            Ok(()) => println!("PostgreSQL is back (pid {})", pid(cluster.postgres.pid())),
            Err(e) => println!("PostgreSQL did not start: {e}"),
        },
        ConsoleCommand::Restart(name) if name == "redis" => match cluster.redis.restart() {
            Ok(()) => println!("Redis is back, empty (pid {}); every node rewrites its directory into it", pid(cluster.redis.pid())),
            Err(e) => println!("Redis did not start: {e}"),
        },
        ConsoleCommand::Restart(name) => {
            let Some(i) = node(cluster, &name) else { return true };
            if let Some((_, p)) = cluster.foreign_nodes().into_iter().find(|(n, _)| *n == name) {
                println!("{name} runs outside this command (pid {p}); stop it first (kill {p}), then restart it here");
                return true;
            }
            if let Some(p) = cluster.signal_node(i, libc::SIGTERM) {
                println!("stopping {name} (pid {p}) first…");
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while cluster.nodes[i].pid().is_some() && std::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    for event in cluster.reap() {
                        if let Event::NodeExited { node, status, .. } = event {
                            println!("{node} {}", describe(status));
                        }
                    }
                }
                if cluster.nodes[i].pid().is_some() {
                    cluster.signal_node(i, libc::SIGKILL);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    cluster.reap();
                }
            }
            match cluster.start_node(i).await {
                Ok(p) => println!("{name} is up again (pid {p}); it rejoins the cluster"),
                Err(e) => println!("{e}"),
            }
        }
        ConsoleCommand::Unknown(line) => println!("not understood: {line:?} (type help)"),
    }
    true
}
