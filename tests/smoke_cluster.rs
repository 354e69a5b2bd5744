//! Smoke tests for the local control plane (hack/cluster-up.sh): they prove
//! the environment behaves like a real cluster before any operator test
//! relies on it. Run with `make test`, or `make cluster-up` then
//! `cargo test --test smoke_cluster`.

mod support;

use std::collections::BTreeMap;

use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, ReplicaSet};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec, SecurityContext};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, PostParams,
};
use kube::{Api, ResourceExt};
use support::{DEFAULT_TIMEOUT, TestNamespace};

/// Any image name will do: KWOK plays the kubelet and pulls nothing.
const IMAGE: &str = "ghcr.io/stefanprodan/podinfo:6.7.1";

fn labels(app: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("app".to_owned(), app.to_owned())])
}

fn deployment(name: &str, replicas: i32) -> Deployment {
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(labels(name)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(name)),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "app".into(),
                        image: Some(IMAGE.into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_is_ready(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|status| {
        status.phase.as_deref() == Some("Running")
            && status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

#[tokio::test]
async fn deployment_becomes_available_with_ready_pods() -> anyhow::Result<()> {
    let client = support::client().await;
    let ns = TestNamespace::new(&client, "smoke-deploy").await?;
    let deployments: Api<Deployment> = ns.api();

    deployments
        .create(&PostParams::default(), &deployment("web", 3))
        .await?;
    let available =
        support::wait_for_deployment_available(&deployments, "web", DEFAULT_TIMEOUT).await?;
    assert_eq!(available.status.and_then(|s| s.ready_replicas), Some(3));

    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app=web"))
        .await?;
    assert_eq!(pods.items.len(), 3, "pods: {:?}", names(&pods.items));
    for pod in &pods.items {
        assert!(
            pod_is_ready(pod),
            "pod {} is not Ready: {:?}",
            pod.name_any(),
            pod.status
        );
        let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
        assert!(
            node.is_some_and(|n| n.starts_with("kwok-node-")),
            "pod {} scheduled to {node:?}, expected a KWOK node",
            pod.name_any()
        );
    }

    ns.delete().await
}

#[tokio::test]
async fn deleting_a_deployment_garbage_collects_replicasets_and_pods() -> anyhow::Result<()> {
    let client = support::client().await;
    let ns = TestNamespace::new(&client, "smoke-gc").await?;
    let deployments: Api<Deployment> = ns.api();
    let replicasets: Api<ReplicaSet> = ns.api();
    let pods: Api<Pod> = ns.api();

    deployments
        .create(&PostParams::default(), &deployment("doomed", 2))
        .await?;
    support::wait_for_deployment_available(&deployments, "doomed", DEFAULT_TIMEOUT).await?;
    let owned = replicasets.list(&ListParams::default()).await?;
    ensure!(
        owned.items.len() == 1,
        "expected one ReplicaSet, found {:?}",
        names(&owned.items)
    );

    deployments
        .delete("doomed", &DeleteParams::background())
        .await?;
    support::wait_for_deleted(&deployments, "doomed", DEFAULT_TIMEOUT).await?;
    support::eventually(
        "the garbage collector to remove the ReplicaSet and its pods",
        DEFAULT_TIMEOUT,
        || async {
            let left_rs = replicasets.list(&ListParams::default()).await?;
            let left_pods = pods.list(&ListParams::default()).await?;
            Ok((left_rs.items.is_empty() && left_pods.items.is_empty()).then_some(()))
        },
    )
    .await?;

    ns.delete().await
}

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.premium.dev
spec:
  group: smoke.premium.dev
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size:
                type: integer
                minimum: 1
"#;

fn widget(name: &str, size: i64) -> anyhow::Result<DynamicObject> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "smoke.premium.dev/v1",
        "kind": "Widget",
        "metadata": { "name": name },
        "spec": { "size": size },
    }))?)
}

#[tokio::test]
async fn crd_schema_is_enforced_by_the_api_server() -> anyhow::Result<()> {
    let client = support::client().await;
    // Cluster-scoped and applied idempotently; left installed so concurrent
    // or repeated runs never meet it half-deleted.
    let crd: CustomResourceDefinition = serde_yaml::from_str(WIDGET_CRD)?;
    support::install_crd(&client, &crd).await?;

    let ns = TestNamespace::new(&client, "smoke-crd").await?;
    let resource =
        ApiResource::from_gvk(&GroupVersionKind::gvk("smoke.premium.dev", "v1", "Widget"));
    let widgets: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &resource);

    // Discovery can lag the Established condition by a moment.
    let created = support::eventually(
        "the Widget resource to be served",
        DEFAULT_TIMEOUT,
        || async {
            match widgets
                .create(&PostParams::default(), &widget("good", 3)?)
                .await
            {
                Ok(created) => Ok(Some(created)),
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
                Err(err) => Err(err.into()),
            }
        },
    )
    .await?;
    assert_eq!(created.data["spec"]["size"], 3);

    let refused = widgets
        .create(&PostParams::default(), &widget("bad", 0)?)
        .await;
    let status = match refused {
        Err(kube::Error::Api(status)) => status,
        Ok(_) => bail!("a Widget with size 0 was accepted despite `minimum: 1`"),
        Err(err) => return Err(err).context("unexpected error kind"),
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains(
            "spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"
        ),
        "unexpected message: {}",
        status.message
    );

    ns.delete().await
}

#[tokio::test]
async fn restricted_pod_security_refuses_a_privileged_pod() -> anyhow::Result<()> {
    let client = support::client().await;
    let ns = TestNamespace::with_labels(
        &client,
        "smoke-psa",
        &[("pod-security.kubernetes.io/enforce", "restricted")],
    )
    .await?;
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some("privileged".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "app".into(),
                image: Some(IMAGE.into()),
                security_context: Some(SecurityContext {
                    privileged: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };

    let refused = ns.api::<Pod>().create(&PostParams::default(), &pod).await;
    let status = match refused {
        Err(kube::Error::Api(status)) => status,
        Ok(_) => bail!("a privileged pod was admitted into a restricted namespace"),
        Err(err) => return Err(err).context("unexpected error kind"),
    };
    assert_eq!(status.code, 403, "{status:?}");
    assert!(
        status
            .message
            .contains("violates PodSecurity \"restricted:latest\"")
            && status.message.contains("privileged"),
        "unexpected message: {}",
        status.message
    );

    ns.delete().await
}

fn names<K: ResourceExt>(objects: &[K]) -> Vec<String> {
    objects.iter().map(ResourceExt::name_any).collect()
}
