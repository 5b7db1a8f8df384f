//! `outpost login|logout|whoami|user|apikey ...`: sessions, users and API keys, which live
//! in the gateway.

use serde_json::Value;

use super::client::{Client, enc};
use super::table::{ago, print_json, s, show_table};

pub async fn login(c: &Client, user: &str, password_stdin: bool) -> anyhow::Result<()> {
    let g = c.gateway()?;
    let password =
        crate::session::read_password(password_stdin, &format!("Password for {user}: "), false)?;
    let s = g.login(user, &password).await?;
    println!("logged in to {} as {} ({})", g.base, s.username, s.role);
    Ok(())
}

pub async fn logout(c: &Client) -> anyhow::Result<()> {
    let g = c.gateway()?;
    if g.logout().await? {
        println!("logged out of {}", g.base);
    } else {
        println!("not logged in to {}", g.base);
    }
    Ok(())
}

pub async fn whoami(c: &Client, json: bool) -> anyhow::Result<()> {
    let v = c.own(reqwest::Method::GET, "/auth/whoami", None).await?;
    if json {
        print_json(&v);
        return Ok(());
    }
    println!(
        "{} ({}) at {}",
        s(&v, "name"),
        s(&v, "role"),
        c.gateway()?.base
    );
    Ok(())
}

pub async fn user_add(
    c: &Client,
    name: &str,
    role: &str,
    password_stdin: bool,
    generate: bool,
) -> anyhow::Result<()> {
    let password = if generate {
        crate::session::generate_password()?
    } else {
        crate::session::read_password(password_stdin, &format!("Password for {name}: "), true)?
    };
    let body = serde_json::json!({"username": name, "password": password, "role": role});
    c.own(reqwest::Method::POST, "/auth/user", Some(&body))
        .await?;
    println!("added user {name} ({role})");
    if generate {
        println!("password: {password}");
        eprintln!("(shown once; it is changed with: outpost user password {name})");
    }
    Ok(())
}

/// The list `key` of an untyped answer (the gateway's own answers have no contracts types).
fn items<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// When an item was created: `created` is in seconds.
fn created(item: &Value) -> String {
    ago(item.get("created").and_then(Value::as_i64).unwrap_or(0) * 1000)
}

pub async fn user_list(c: &Client, json: bool) -> anyhow::Result<()> {
    let v = c.own(reqwest::Method::GET, "/auth/user", None).await?;
    show_table(v, json, &["USER", "ROLE", "CREATED"], |v: Value| {
        items(&v, "users")
            .iter()
            .map(|u| vec![s(u, "username"), s(u, "role"), created(u)])
            .collect()
    })
}

pub async fn user_rm(c: &Client, name: &str) -> anyhow::Result<()> {
    c.own(
        reqwest::Method::DELETE,
        &format!("/auth/user/{}", enc(name)),
        None,
    )
    .await?;
    println!("removed user {name}; their tokens no longer work");
    Ok(())
}

pub async fn user_password(c: &Client, name: &str, password_stdin: bool) -> anyhow::Result<()> {
    let password =
        crate::session::read_password(password_stdin, &format!("New password for {name}: "), true)?;
    let body = serde_json::json!({"password": password});
    c.own(
        reqwest::Method::PUT,
        &format!("/auth/user/{}/password", enc(name)),
        Some(&body),
    )
    .await?;
    println!("password of {name} set; their earlier tokens no longer work");
    Ok(())
}

pub async fn apikey_create(c: &Client, name: &str, role: &str) -> anyhow::Result<()> {
    let body = serde_json::json!({"name": name, "role": role});
    let v = c
        .own(reqwest::Method::POST, "/auth/apikey", Some(&body))
        .await?;
    println!("API key {} ({name}, {role}):", s(&v, "id"));
    println!("{}", s(&v, "key"));
    eprintln!("(shown once; send it as X-API-Key or Authorization: Bearer)");
    Ok(())
}

pub async fn apikey_list(c: &Client, json: bool) -> anyhow::Result<()> {
    let v = c.own(reqwest::Method::GET, "/auth/apikey", None).await?;
    show_table(
        v,
        json,
        &["ID", "NAME", "ROLE", "OWNER", "CREATED", "STATE"],
        |v: Value| {
            items(&v, "apiKeys")
                .iter()
                .map(|k| {
                    vec![
                        s(k, "id"),
                        s(k, "name"),
                        s(k, "role"),
                        s(k, "owner"),
                        created(k),
                        if k.get("revoked").is_some_and(|r| !r.is_null()) {
                            "revoked".into()
                        } else {
                            "active".into()
                        },
                    ]
                })
                .collect()
        },
    )
}

pub async fn apikey_revoke(c: &Client, id: &str) -> anyhow::Result<()> {
    c.own(
        reqwest::Method::DELETE,
        &format!("/auth/apikey/{}", enc(id)),
        None,
    )
    .await?;
    println!("revoked API key {id}");
    Ok(())
}
