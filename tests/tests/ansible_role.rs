//! The Ansible role in `contrib/ansible` run by ansible-core against three
//! local "hosts" (connection local, one config file each): `lb` is the
//! lab's LB host with a running agent, which the role's handler reloads;
//! `lb2` and `lb3` get files only. Checked: the files and the reload; a bad
//! variable refused by `lb-agent check` with nothing changed; hosts whose
//! configs would forward differently fail the play. Needs root (the lab).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use lb_tests::agent::{e2e_config, workspace_root};
use lb_tests::lab::{Lab, LabBins};
use lb_tests::topology::{self, LB};

/// A play of a few tasks on three local hosts; ansible-core is slow to start.
const PLAY_LIMIT: Duration = Duration::from_secs(240);

fn bins() -> LabBins {
    lb_tests::lab_bins!()
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The lab config's VIPs as the role's `lb_vips` (`backend` -> `backends`).
fn role_vips(config: &toml::Table, weight_of_first: i64) -> serde_json::Value {
    let vips = config["vip"].as_array().expect("vips").iter().map(|v| {
        let mut vip = serde_json::to_value(v).expect("toml to json");
        let backends = vip.as_object_mut().unwrap().remove("backend").expect("backends");
        vip["backends"] = backends;
        vip
    });
    let mut vips: Vec<serde_json::Value> = vips.collect();
    vips[0]["backends"][0]["weight"] = weight_of_first.into();
    vips.into()
}

struct Play {
    dir: PathBuf,
    lab: Lab,
}

impl Play {
    fn config_of(&self, host: &str) -> PathBuf {
        if host == LB { self.lab.config_path.clone() } else { self.dir.join(host).join("lb.toml") }
    }

    /// Runs the role with `vips` for every host (`lb3_vips` overrides lb3's).
    fn run(&self, vips: serde_json::Value, lb3_vips: Option<serde_json::Value>) -> Output {
        let lb = self.lab.config["lb"].as_table().expect("[lb]");
        let local = |key: &str| lb.get(key).and_then(|v| v.as_str()).unwrap_or_default().to_string();
        let agent = s(&self.lab.bins.agent);
        let ns = self.lab.topo.ns_name(LB).to_string();
        let mut hosts = serde_json::json!({
            LB: {
                "lb_config_path": s(&self.config_of(LB)),
                "lb_tunnel_source_v4": local("tunnel_source_v4"),
                "lb_tunnel_source_v6": local("tunnel_source_v6"),
                "lb_bpffs_dir": local("bpffs_dir"),
                "lb_run_dir": local("run_dir"),
                // The agent runs in the lab's namespace.
                "lb_reload_command": format!("ip netns exec {ns} {agent} reload --config {}", s(&self.config_of(LB))),
            },
        });
        for host in ["lb2", "lb3"] {
            hosts[host] = serde_json::json!({ "lb_config_path": s(&self.config_of(host)), "lb_reload_command": "" });
        }
        if let Some(v) = lb3_vips {
            hosts["lb3"]["lb_vips"] = v;
        }
        let inventory = serde_json::json!({
            "lb_hosts": {
                "vars": {
                    "ansible_connection": "local",
                    // The Python that runs ansible-playbook runs the modules too (no interpreter discovery).
                    "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                    "lb_agent_bin": agent,
                    "lb_vips": vips,
                },
                "hosts": hosts,
            }
        });
        let inventory_path = self.dir.join("inventory.yml");
        std::fs::write(&inventory_path, serde_json::to_string_pretty(&inventory).unwrap()).unwrap();
        let playbook = self.dir.join("play.yml");
        std::fs::write(&playbook, "- hosts: lb_hosts\n  gather_facts: false\n  roles: [lb_agent]\n").unwrap();
        let mut cmd = Command::new("ansible-playbook");
        cmd.args(["-i", &s(&inventory_path), &s(&playbook)])
            .env("ANSIBLE_ROLES_PATH", workspace_root().join("contrib/ansible/roles"))
            .env("ANSIBLE_HOME", self.dir.join("ansible-home"))
            .env("ANSIBLE_LOCAL_TEMP", self.dir.join("ansible-tmp"))
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "0");
        let out = topology::run_with_timeout(cmd, PLAY_LIMIT).unwrap_or_else(|e| panic!("ansible-playbook (run `cargo xtask setup`): {e:#}"));
        std::fs::write(self.dir.join(format!("play-{}.log", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis())), &out.stdout).unwrap();
        out
    }

    fn files(&self) -> Vec<Vec<u8>> {
        [LB, "lb2", "lb3"].iter().map(|h| std::fs::read(self.config_of(h)).unwrap_or_default()).collect()
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn the_role_templates_validates_reloads_and_compares_fingerprints() {
    if !topology::root_or_skip("the_role_templates_validates_reloads_and_compares_fingerprints", "network namespaces, XDP (the reloaded agent)") {
        return;
    }
    let lab = Lab::start(bins(), 2, e2e_config(2), &|l| eprintln!("  {l}")).unwrap_or_else(|e| panic!("{e:#}"));
    let dir = lab.topo.log_dir().join("ansible");
    std::fs::create_dir_all(&dir).unwrap();
    let play = Play { dir, lab };
    let reloads = || std::fs::read_to_string(play.lab.agent.log_path()).unwrap_or_default().matches("reload of ").count();

    // A change of weight everywhere: three files, the running agent reloaded.
    let before = reloads();
    let out = play.run(role_vips(&play.lab.config, 3), None);
    assert!(out.status.success(), "the play failed:\n{}", text(&out));
    assert!(text(&out).contains("all 3 LB hosts run fingerprint"), "{}", text(&out));
    for host in [LB, "lb2", "lb3"] {
        let config = std::fs::read_to_string(play.config_of(host)).unwrap_or_else(|e| panic!("{host}'s file: {e}"));
        assert!(config.contains("weight = 3"), "{host}:\n{config}");
    }
    assert_eq!(reloads(), before + 1, "the handler reloads lb's agent once:\n{}", play.lab.agent.log_tail(20));
    assert!(play.lab.agent.log_tail(50).contains("reload of"), "{}", play.lab.agent.log_tail(20));

    // A bad variable: lb-agent check refuses it, no file changes, no reload.
    let files = play.files();
    let mut bad = role_vips(&play.lab.config, 3);
    bad[0]["port"] = 70000.into();
    let out = play.run(bad, None);
    assert!(!out.status.success(), "a port of 70000 was accepted:\n{}", text(&out));
    assert!(text(&out).contains("70000"), "the refusal names the value:\n{}", text(&out));
    assert_eq!(play.files(), files, "a refused variable changed a file");
    assert_eq!(reloads(), before + 1, "a refused variable reloaded the agent");

    // lb3 would forward differently: the play fails naming the fingerprints.
    let mut fewer = role_vips(&play.lab.config, 3);
    fewer[0]["backends"].as_array_mut().unwrap().pop();
    let out = play.run(role_vips(&play.lab.config, 3), Some(fewer));
    assert!(!out.status.success(), "differing hosts passed:\n{}", text(&out));
    assert!(text(&out).contains("LB hosts run different forwarding configs"), "{}", text(&out));
}
