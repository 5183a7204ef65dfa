//! The MQTT side of the edge: one client connection (rumqttc) to a broker such as mosquitto,
//! subscribed to upstream's `$hw/events/...` topics, re-subscribing after every reconnect.
//!
//! Upstream's defaults carry over: clean session, subscriptions and publications at QoS 1, a
//! reconnect every few seconds while the broker is away. What arrives is handed over as
//! `(topic, payload)` on a channel.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::Error;

/// Largest MQTT packet taken or sent (rumqttc's default is 10 KiB; twin documents can be larger).
pub const MAX_PACKET: usize = 1 << 20;
/// Delay between connection attempts while the broker is unreachable.
pub const RECONNECT: Duration = Duration::from_secs(2);

/// A received message: topic and payload.
pub type Received = (String, Vec<u8>);

/// `tcp://host:port`, `mqtt://host:port` or `host:port` (port 1883 when left out) as host and port.
pub fn parse_url(url: &str) -> Result<(String, u16), Error> {
    let rest = url
        .strip_prefix("tcp://")
        .or_else(|| url.strip_prefix("mqtt://"))
        .unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| Error::Config(format!("MQTT broker {url:?}: bad port {p:?}")))?,
        ),
        None => (rest, 1883),
    };
    if host.is_empty() {
        return Err(Error::Config(format!("MQTT broker {url:?}: no host")));
    }
    Ok((host.to_owned(), port))
}

/// A connection to the broker; cloning shares it.
#[derive(Clone)]
pub struct EventBus {
    client: AsyncClient,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus").finish_non_exhaustive()
    }
}

impl EventBus {
    /// Connects (in the background, retrying for ever) to the broker at `url` as `client_id`,
    /// subscribing to `topics` on every connection; what arrives goes to the returned receiver.
    /// The connection task ends when the receiver and every clone of the bus are dropped.
    pub fn connect(
        url: &str,
        client_id: &str,
        topics: &[&str],
    ) -> Result<(EventBus, mpsc::Receiver<Received>), Error> {
        let (host, port) = parse_url(url)?;
        let mut options = MqttOptions::new(client_id, host, port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let (client, mut events) = AsyncClient::new(options, 256);
        let (tx, rx) = mpsc::channel(1024);
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        let subscriber = client.clone();
        let url = url.to_owned();
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        tracing::info!(broker = %url, "event bus connected");
                        failing = false;
                        for t in &topics {
                            if let Err(e) = subscriber.subscribe(t.clone(), QoS::AtLeastOnce).await
                            {
                                tracing::warn!(topic = %t, error = %e, "cannot subscribe");
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if tx.send((p.topic, p.payload.to_vec())).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if tx.is_closed() {
                            return;
                        }
                        if !failing {
                            tracing::warn!(broker = %url, error = %e, "event bus: broker unreachable; retrying");
                        }
                        failing = true;
                        tokio::time::sleep(RECONNECT).await;
                    }
                }
            }
        });
        Ok((EventBus { client }, rx))
    }

    /// Publishes `payload` on `topic` at QoS 1 without waiting (dropped, with a warning, when the
    /// outgoing queue is full because the broker has been away for long).
    pub fn publish(&self, topic: &str, payload: Vec<u8>) {
        if let Err(e) = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
        {
            tracing::warn!(topic, error = %e, "event bus: message dropped");
        }
    }

    /// Publishes `value` as JSON on `topic` (see [`EventBus::publish`]).
    pub fn publish_json<T: serde::Serialize>(&self, topic: &str, value: &T) {
        match serde_json::to_vec(value) {
            Ok(bytes) => self.publish(topic, bytes),
            Err(e) => tracing::warn!(topic, error = %e, "event bus: cannot encode"),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn broker_urls() {
        assert_eq!(
            parse_url("tcp://127.0.0.1:1884").unwrap(),
            ("127.0.0.1".into(), 1884)
        );
        assert_eq!(parse_url("localhost").unwrap(), ("localhost".into(), 1883));
        assert!(parse_url("tcp://h:x").is_err());
        assert!(parse_url("tcp://:1").is_err());
    }
}
