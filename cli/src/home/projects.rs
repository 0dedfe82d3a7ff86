//! Project files in the state directory: which projects this machine knows, and how their
//! authority and project node are reached.

use anyhow::{Context as _, Result, bail};
use kith_authority::project::Project;
use kith_identity::Identifier;

use super::Home;

/// The project called `name`.
pub fn load_project(home: &Home, name: &str) -> Result<Project> {
    let text = home.load_project(name)?;
    Project::from_json(&text).with_context(|| format!("the saved project {name:?} is damaged"))
}

/// The project called `name`, or the default one. `choose_with` is how the calling command
/// names a project (`--project NAME`, say), for the hint when there is no default to use.
pub fn load_project_or_default(
    home: &Home,
    name: Option<&str>,
    choose_with: &str,
) -> Result<Project> {
    let name = match name {
        Some(n) => n.to_owned(),
        None => match home.default_project_name()? {
            Some(n) => n,
            None => {
                let names = home.project_names()?;
                match names.as_slice() {
                    [one] => one.clone(),
                    [] => bail!(
                        "no project is known here; create one with `kith authority create`, or enroll with a ticket (`kith project enroll`)"
                    ),
                    _ => bail!(
                        "several projects are known here ({}) and none is the default; choose one with {choose_with}",
                        names.join(", ")
                    ),
                }
            }
        },
    };
    load_project(home, &name)
}

/// The project known here under `project`'s name, if it is a different project (another
/// id): what importing `project` would wrongly replace.
pub fn clashing_project(home: &Home, project: &Project) -> Option<Project> {
    let known = Project::from_json(&home.load_project(&project.name).ok()?).ok()?;
    (known.id != project.id).then_some(known)
}

/// Save `project`, refusing to replace a different project of the same name.
pub fn save_project(home: &Home, project: &Project) -> Result<()> {
    if let Some(known) = clashing_project(home, project) {
        bail!(
            "a different project named {:?} (id {}) is already known here; delete {} first if it is gone",
            project.name,
            known.id,
            home.project_path(&project.name).display()
        );
    }
    home.save_project(&project.name, &project.to_json())
}

/// The route `/ip4/HOST/tcp/PORT` (or ip6) that reaches a listener bound to `listener`.
pub fn listener_route(listener: &str) -> Result<kith_transport::MultiAddr> {
    let addr: std::net::SocketAddr = listener
        .parse()
        .with_context(|| format!("the listener address {listener:?} is not HOST:PORT"))?;
    let text = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            format!("/ip4/127.0.0.1/tcp/{}", addr.port())
        }
        std::net::IpAddr::V4(ip) => format!("/ip4/{ip}/tcp/{}", addr.port()),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => format!("/ip6/::1/tcp/{}", addr.port()),
        std::net::IpAddr::V6(ip) => format!("/ip6/{ip}/tcp/{}", addr.port()),
    };
    text.parse()
        .with_context(|| format!("cannot make a route of {listener:?}"))
}

/// The known project whose authority is `authority`, if any.
pub fn project_of_authority(home: &Home, authority: &Identifier) -> Result<Option<Project>> {
    for name in home.project_names()? {
        let p = load_project(home, &name)?;
        if p.authority_identifier() == authority {
            return Ok(Some(p));
        }
    }
    Ok(None)
}
