//! `mosix mon`: the cluster's nodes, their load, memory and processes, live
//! in the terminal (the modern `mosmon`). `q` or Esc quits.
use std::path::Path;
use std::time::Duration;

use mosix_daemon::control;
use mosix_proto::{ControlRequest, ControlResponse, MemberInfo, MemberState};
use ratatui::crossterm::event::{self, Event, KeyCode};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};
use ratatui::Frame;

fn gib(b: u64) -> String {
    format!("{:.1}G", b as f64 / (1u64 << 30) as f64)
}

/// Draws one screen from `node`'s view of `members`.
pub fn draw(f: &mut Frame, node: &str, members: &[MemberInfo], error: Option<&str>) {
    let alive: Vec<&MemberInfo> = members
        .iter()
        .filter(|m| m.state == MemberState::Alive)
        .collect();
    let cpus: u32 = alive
        .iter()
        .filter_map(|m| m.load.as_ref())
        .map(|l| l.cpus)
        .sum();
    let procs: u32 = alive
        .iter()
        .filter_map(|m| m.load.as_ref())
        .map(|l| l.procs)
        .sum();
    let load: f64 = alive
        .iter()
        .filter_map(|m| m.load.as_ref())
        .map(|l| l.load1)
        .sum();
    let [head, table, foot] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let summary = format!(
        "{} of {} nodes alive | {cpus} CPUs | load {load:.2} | {procs} processes | seen from {node}",
        alive.len(),
        members.len()
    );
    f.render_widget(
        Paragraph::new(summary).block(Block::bordered().title(" mosix mon ")),
        head,
    );
    let rows = members.iter().map(|m| {
        let state_style = match m.state {
            MemberState::Alive => Style::default().fg(Color::Green),
            MemberState::Suspect => Style::default().fg(Color::Yellow),
            MemberState::Dead => Style::default().fg(Color::Red),
            MemberState::Left => Style::default().fg(Color::DarkGray),
        };
        let (cpus, load, mem, procs, speed) = match &m.load {
            Some(l) => (
                l.cpus.to_string(),
                format!("{:.2}", l.load1),
                format!(
                    "{} / {}",
                    gib(l.totalmem.saturating_sub(l.freemem)),
                    gib(l.totalmem)
                ),
                l.procs.to_string(),
                l.speed.to_string(),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
        };
        let name = if m.is_self {
            format!("{}*", m.name)
        } else {
            m.name.clone()
        };
        Row::new(vec![
            Cell::from(name),
            Cell::from(m.state.to_string()).style(state_style),
            Cell::from(cpus),
            Cell::from(load),
            Cell::from(mem),
            Cell::from(procs),
            Cell::from(speed),
        ])
    });
    let widths = [
        Constraint::Length(12),
        Constraint::Length(8),
        Constraint::Length(5),
        Constraint::Length(7),
        Constraint::Length(16),
        Constraint::Length(7),
        Constraint::Length(7),
    ];
    let t = Table::new(rows, widths)
        .header(
            Row::new([
                "NODE", "STATE", "CPUS", "LOAD", "MEM USED", "PROCS", "SPEED",
            ])
            .bold(),
        )
        .block(Block::bordered().title(" nodes "));
    f.render_widget(t, table);
    let footer = match error {
        Some(e) => Line::from(format!("daemon: {e}")).red(),
        None => Line::from("q: quit"),
    };
    f.render_widget(footer, foot);
}

/// A closed stdout (`mosix mon | head`) ends mon quietly, as it does every
/// command.
fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

pub async fn run(control_path: &Path, interval: Duration) -> anyhow::Result<i32> {
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            ratatui::restore();
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(0);
            }
            return Err(anyhow::Error::from(e).context("cannot draw on this terminal"));
        }
    };
    let result = async {
        // The last good view stays on screen while the daemon does not answer.
        let (mut node, mut members) = (String::new(), Vec::new());
        loop {
            let error = match control::request(control_path, &ControlRequest::Status).await {
                Ok(ControlResponse::Status {
                    node: n,
                    members: m,
                }) => {
                    node = n;
                    members = m;
                    None
                }
                Ok(other) => Some(format!("unexpected answer {other:?}")),
                Err(e) => Some(e),
            };
            terminal.draw(|f| draw(f, &node, &members, error.as_deref()))?;
            // Waits for a key up to one refresh interval.
            let quit = tokio::task::block_in_place(|| -> std::io::Result<bool> {
                if event::poll(interval)? {
                    if let Event::Key(k) = event::read()? {
                        return Ok(matches!(k.code, KeyCode::Char('q') | KeyCode::Esc));
                    }
                }
                Ok(false)
            })?;
            if quit {
                return anyhow::Ok(0);
            }
        }
    }
    .await;
    ratatui::restore();
    match result {
        Err(e) if broken_pipe(&e) => Ok(0),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosix_proto::LoadRecord;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    #[test]
    fn shows_every_node_and_cluster_totals() {
        let load = |cpus, procs| {
            Some(LoadRecord {
                cpus,
                load1: 0.5,
                freemem: 1 << 30,
                totalmem: 4 << 30,
                procs,
                speed: 100,
                uptime: 9,
            })
        };
        let m = |name: &str, state, load, is_self| MemberInfo {
            name: name.into(),
            addr: "127.0.0.1:7700".parse().unwrap(),
            state,
            load,
            load_age_ms: Some(0),
            is_self,
        };
        let members = vec![
            m("n1", MemberState::Alive, load(2, 10), true),
            m("n2", MemberState::Alive, load(4, 20), false),
            m("n3", MemberState::Dead, None, false),
        ];
        let mut t = Terminal::new(TestBackend::new(100, 12)).unwrap();
        t.draw(|f| draw(f, "n1", &members, None)).unwrap();
        let screen: String = t
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect();
        assert!(
            screen.contains("2 of 3 nodes alive | 6 CPUs | load 1.00 | 30 processes"),
            "{screen}"
        );
        assert!(screen.contains("n1*") && screen.contains("n2") && screen.contains("dead"));
        assert!(screen.contains("3.0G / 4.0G"), "{screen}");
    }
}
