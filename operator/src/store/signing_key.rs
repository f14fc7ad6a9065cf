//! The key presigned URLs are signed with, kept where the objects are: with the embedded store in its database
//! (see [`super::Embedded::signing_key`]); with the Kubernetes store in a Secret of the operator's namespace, one
//! per operator id, so that replicas of one operator share it, a restart keeps it, and another operator's URLs do
//! not verify. Two replicas starting together may both try to create it: the loser reads the winner's.

use std::collections::BTreeMap;

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use sha2::{Digest, Sha256};

use crate::Error;

/// The data key of the Secret that holds the key.
const DATA_KEY: &str = "key";

/// The Secret's name for `operator_id`: a DNS name whatever the id holds.
pub fn secret_name(operator_id: &str) -> String {
    let digest = Sha256::digest(operator_id.as_bytes());
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("aenv-operator-signing-{hex}")
}

fn kube_err(context: &str) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |source| Error::Kube { context: context.to_string(), source }
}

/// The key in Secret [`secret_name`] of `namespace`, made (32 random bytes) when there is none.
pub async fn kube_signing_key(client: &Client, namespace: &str, operator_id: &str) -> Result<Vec<u8>, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = secret_name(operator_id);
    let stored = |s: Secret| s.data.and_then(|mut d| d.remove(DATA_KEY)).map(|b| b.0).filter(|k| k.len() >= 32);
    if let Some(secret) = api.get_opt(&name).await.map_err(kube_err("reading the signing key's Secret"))? {
        return stored(secret).ok_or_else(|| {
            Error::Config(format!(
                "Secret {namespace}/{name} holds no usable `{DATA_KEY}` (32 bytes or more): delete it to make a new one"
            ))
        });
    }
    let key = crate::usecase::presign::new_key();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_string(), "aenv-operator".to_string())])),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(DATA_KEY.to_string(), ByteString(key.clone()))])),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => Ok(key),
        // Another replica made it first: use that one.
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let secret = api.get(&name).await.map_err(kube_err("reading the signing key's Secret"))?;
            stored(secret)
                .ok_or_else(|| Error::Config(format!("Secret {namespace}/{name} holds no usable `{DATA_KEY}`")))
        }
        Err(e) => Err(kube_err("creating the signing key's Secret")(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    type Handle =
        tower_test::mock::Handle<warp::http::Request<kube::client::Body>, warp::http::Response<kube::client::Body>>;

    async fn next(
        handle: &mut Handle,
    ) -> (String, String, Vec<u8>, tower_test::mock::SendResponse<warp::http::Response<kube::client::Body>>) {
        let (request, send) =
            tokio::time::timeout(Duration::from_secs(5), handle.next_request()).await.unwrap().unwrap();
        let (method, path) = (request.method().to_string(), request.uri().path().to_string());
        let body = request.into_body().collect_bytes().await.unwrap().to_vec();
        (method, path, body, send)
    }

    fn respond(
        send: tower_test::mock::SendResponse<warp::http::Response<kube::client::Body>>,
        code: u16,
        body: serde_json::Value,
    ) {
        send.send_response(
            warp::http::Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap(),
        );
    }

    fn not_found(name: &str) -> serde_json::Value {
        serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("secrets \"{name}\" not found")})
    }

    #[tokio::test]
    async fn the_key_is_made_once_and_read_back_and_a_lost_race_reads_the_winners() {
        let name = secret_name("op-1");
        let path = format!("/api/v1/namespaces/ns/secrets/{name}");
        // None yet: made, and the key sent is the key answered.
        let (service, mut handle) = tower_test::mock::pair();
        let client = Client::new(service, "default");
        let made = tokio::spawn(async move { kube_signing_key(&client, "ns", "op-1").await.unwrap() });
        let (method, p, _, send) = next(&mut handle).await;
        assert_eq!((method.as_str(), p.as_str()), ("GET", path.as_str()));
        respond(send, 404, not_found(&name));
        let (method, p, body, send) = next(&mut handle).await;
        assert_eq!((method.as_str(), p.as_str()), ("POST", "/api/v1/namespaces/ns/secrets"));
        let posted: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(posted["metadata"]["name"], name.as_str());
        respond(send, 201, posted.clone());
        let key = made.await.unwrap();
        assert_eq!(key.len(), 32);
        let sent: Secret = serde_json::from_value(posted.clone()).unwrap();
        assert_eq!(sent.data.unwrap()[DATA_KEY].0, key);

        // Another replica lost the race: it reads the Secret the first one made.
        let (service, mut handle) = tower_test::mock::pair();
        let client = Client::new(service, "default");
        let second = tokio::spawn(async move { kube_signing_key(&client, "ns", "op-1").await.unwrap() });
        let (_, _, _, send) = next(&mut handle).await;
        respond(send, 404, not_found(&name));
        let (_, _, _, send) = next(&mut handle).await;
        respond(
            send,
            409,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists", "code": 409, "message": "exists"}),
        );
        let (method, p, _, send) = next(&mut handle).await;
        assert_eq!((method.as_str(), p.as_str()), ("GET", path.as_str()));
        respond(send, 200, posted);
        assert_eq!(second.await.unwrap(), key, "both replicas sign with one key");
        assert_ne!(secret_name("op-1"), secret_name("op-2"), "one Secret per operator id");
    }
}
