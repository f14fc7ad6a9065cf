//! Making sure an instance's image is on the host, by its pull policy.

use aenv_core::{EngineError, EnvInstanceSpec, ErrorKind, InvalidSpec, PullPolicy, PullProgress, PullState, Workload};
use bollard::{Docker, query_parameters::CreateImageOptionsBuilder};
use futures::{StreamExt, TryStreamExt, stream::BoxStream};

use crate::{
    Policy,
    error::{classify, is_not_found},
};

/// Splits `repo[:tag]` (a digest reference is passed whole), defaulting the tag to `latest`, so that a pull
/// fetches one image rather than every tag of the repository.
pub(crate) fn split_reference(image: &str) -> (&str, &str) {
    if image.contains('@') {
        return (image, "");
    }
    let last_segment_start = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_segment_start..].rfind(':') {
        Some(i) => (&image[..last_segment_start + i], &image[last_segment_start + i + 1..]),
        None => (image, "latest"),
    }
}

/// Ensures the image is present, pulling it when the policy says so, and only from a registry the host policy
/// allows (checked at validate time too; again here for objects written around the API and policies changed
/// since).
pub async fn ensure_image(docker: &Docker, image: &str, policy: PullPolicy, host: &Policy) -> Result<(), EngineError> {
    let present = match docker.inspect_image(image).await {
        Ok(_) => true,
        Err(e) if is_not_found(&e) => false,
        Err(e) => return Err(classify(&format!("inspecting image {image:?}"), e)),
    };
    match (policy, present) {
        (PullPolicy::IfNotPresent, true) | (PullPolicy::Never, true) => return Ok(()),
        (PullPolicy::Never, false) => {
            return Err(EngineError::permanent(format!(
                "image {image:?} is not on the Docker host and the pull policy is Never (load it with docker load or docker build)"
            )));
        }
        _ => {}
    }
    host.check_registry_resolved(image).await.map_err(EngineError::permanent)?;
    let (from_image, tag) = split_reference(image);
    let options = CreateImageOptionsBuilder::default().from_image(from_image).tag(tag).build();
    let credentials = crate::auth::credentials_for(image);
    let pulled = docker.create_image(Some(options), None, credentials).try_collect::<Vec<_>>().await;
    match pulled {
        Ok(_) => Ok(()),
        Err(e) => {
            let err = classify(&format!("pulling image {image:?}"), e);
            match err.kind() {
                // A daemon that does not answer: retried.
                ErrorKind::Unavailable => Err(err),
                // A pull that the daemon refused (no such image, no registry) fails the instance, unless the image
                // was there and only a refresh (Always) failed.
                _ if present => Ok(()),
                _ => Err(err.as_kind(ErrorKind::Permanent).reworded(|msg| {
                    format!(
                        "{msg} (the image is not on the Docker host; build or load it there, or make its registry reachable)"
                    )
                })),
            }
        }
    }
}

/// Pulls each image in turn, sending progress: `Present` for an image on the host already, `Pulling` with the
/// daemon's status lines while it pulls, then `Pulled` or `Failed` with the daemon's message.
pub fn warmup(docker: Docker, images: Vec<String>, no_pull: bool, host: Policy) -> BoxStream<'static, PullProgress> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        for image in images {
            let send = |state, detail: String| {
                let tx = tx.clone();
                let image = image.clone();
                async move { tx.send(PullProgress { image, state, detail }).await.is_ok() }
            };
            match docker.inspect_image(&image).await {
                Ok(_) => {
                    if !send(PullState::Present, String::new()).await {
                        return;
                    }
                    continue;
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    let _ =
                        send(PullState::Failed, classify(&format!("inspecting image {image:?}"), e).to_string()).await;
                    continue;
                }
            }
            if no_pull {
                let _ = send(PullState::Failed, "not on the host, and this operator runs with --no-pull".into()).await;
                continue;
            }
            if let Err(why) = host.check_registry_resolved(&image).await {
                let _ = send(PullState::Failed, why).await;
                continue;
            }
            if !send(PullState::Pulling, String::new()).await {
                return;
            }
            let (from_image, tag) = split_reference(&image);
            let options = CreateImageOptionsBuilder::default().from_image(from_image).tag(tag).build();
            let mut pull = docker.create_image(Some(options), None, crate::auth::credentials_for(&image));
            let mut failed = None;
            while let Some(item) = pull.next().await {
                match item {
                    Ok(info) => {
                        let progress = info.progress_detail.and_then(|p| match (p.current, p.total) {
                            (Some(c), Some(t)) if t > 0 => Some(format!("{c}/{t} bytes")),
                            _ => None,
                        });
                        let detail =
                            [info.id, info.status, progress].into_iter().flatten().collect::<Vec<_>>().join(" ");
                        if !send(PullState::Pulling, detail).await {
                            return;
                        }
                    }
                    Err(e) => {
                        failed = Some(classify(&format!("pulling image {image:?}"), e).to_string());
                        break;
                    }
                }
            }
            let done = match failed {
                Some(msg) => send(PullState::Failed, msg).await,
                None => send(PullState::Pulled, String::new()).await,
            };
            if !done {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx).boxed()
}

/// The registry check by address ([`Policy::check_image_resolved`]) of every image a spec runs: its image, or
/// each service's of its compose stack, each refusal naming its field. Both Docker engines admit specs with it.
pub async fn admit_images(spec: &EnvInstanceSpec, policy: &Policy) -> Result<(), InvalidSpec> {
    match spec.workload() {
        Workload::Stack { compose_file } => {
            for svc in crate::compose::plan(spec, compose_file, policy)?.services {
                policy.check_image_resolved(&svc.image, &format!("services.{}.image", svc.name)).await?;
            }
            Ok(())
        }
        Workload::Container { image: Some(image) } => policy.check_image_resolved(image, "image").await,
        Workload::Container { image: None } => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn references() {
        assert_eq!(split_reference("alpine"), ("alpine", "latest"));
        assert_eq!(split_reference("alpine:3.20"), ("alpine", "3.20"));
        assert_eq!(split_reference("localhost:5000/team/img"), ("localhost:5000/team/img", "latest"));
        assert_eq!(split_reference("localhost:5000/team/img:v1"), ("localhost:5000/team/img", "v1"));
        assert_eq!(split_reference("img@sha256:abc"), ("img@sha256:abc", ""));
    }
}
