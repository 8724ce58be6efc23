import Foundation

// The batch/v1 Job, v1 Pod and v1 Secret subset the dispatcher and sweeper use. Decoding is
// lenient (unknown fields are ignored, almost everything is optional: a BOOKMARK event carries
// an all-but-empty Job); encoding omits what is nil, so an emitted manifest holds only what was set.

public struct ObjectMeta: Codable, Sendable, Equatable {
    public var name: String?
    public var generateName: String?
    public var namespace: String?
    public var uid: String?
    public var resourceVersion: String?
    public var creationTimestamp: String?
    public var deletionTimestamp: String?
    public var labels: [String: String]?
    public var annotations: [String: String]?
    public var ownerReferences: [OwnerReference]?
    public var finalizers: [String]?

    public init(
        name: String? = nil, namespace: String? = nil, labels: [String: String]? = nil,
        annotations: [String: String]? = nil, ownerReferences: [OwnerReference]? = nil
    ) {
        self.name = name
        self.namespace = namespace
        self.labels = labels
        self.annotations = annotations
        self.ownerReferences = ownerReferences
    }
}

public struct OwnerReference: Codable, Sendable, Equatable {
    public var apiVersion: String
    public var kind: String
    public var name: String
    public var uid: String
    public var controller: Bool?
    public var blockOwnerDeletion: Bool?

    public init(
        apiVersion: String, kind: String, name: String, uid: String, controller: Bool? = nil,
        blockOwnerDeletion: Bool? = nil
    ) {
        self.apiVersion = apiVersion
        self.kind = kind
        self.name = name
        self.uid = uid
        self.controller = controller
        self.blockOwnerDeletion = blockOwnerDeletion
    }
}

public struct Job: Codable, Sendable, Equatable {
    public var apiVersion: String?
    public var kind: String?
    public var metadata: ObjectMeta
    public var spec: JobSpec?
    public var status: JobStatus?

    public init(metadata: ObjectMeta, spec: JobSpec) {
        self.apiVersion = "batch/v1"
        self.kind = "Job"
        self.metadata = metadata
        self.spec = spec
    }

    /// The terminal condition, if the Job has one: Complete, or Failed with its reason.
    public var finished: JobCondition? {
        status?.conditions?.first { ($0.type == "Complete" || $0.type == "Failed") && $0.status == "True" }
    }
}

/// A Job as reconciling needs it — metadata and status; its spec is neither decoded nor kept
/// (listing thousands of Jobs, the spec is most of the decoding).
public struct JobSummary: Codable, Sendable, Equatable {
    public var metadata: ObjectMeta
    public var status: JobStatus?

    public init(metadata: ObjectMeta, status: JobStatus?) {
        self.metadata = metadata
        self.status = status
    }

    /// The terminal condition, if the Job has one (by type, never by position).
    public var finished: JobCondition? {
        status?.conditions?.first { ($0.type == "Complete" || $0.type == "Failed") && $0.status == "True" }
    }
}

public struct JobSpec: Codable, Sendable, Equatable {
    public var parallelism: Int?
    public var completions: Int?
    public var backoffLimit: Int?
    public var activeDeadlineSeconds: Int?
    public var ttlSecondsAfterFinished: Int?
    public var selector: LabelSelector?
    public var template: PodTemplateSpec

    public init(
        backoffLimit: Int? = nil, activeDeadlineSeconds: Int? = nil, ttlSecondsAfterFinished: Int? = nil,
        template: PodTemplateSpec
    ) {
        self.backoffLimit = backoffLimit
        self.activeDeadlineSeconds = activeDeadlineSeconds
        self.ttlSecondsAfterFinished = ttlSecondsAfterFinished
        self.template = template
    }
}

public struct LabelSelector: Codable, Sendable, Equatable {
    public var matchLabels: [String: String]?
}

public struct JobStatus: Codable, Sendable, Equatable {
    public var startTime: String?
    public var completionTime: String?
    public var active: Int?
    public var succeeded: Int?
    public var failed: Int?
    public var conditions: [JobCondition]?
}

public struct JobCondition: Codable, Sendable, Equatable {
    public var type: String
    public var status: String
    public var reason: String?
    public var message: String?
    public var lastProbeTime: String?
    public var lastTransitionTime: String?
}

public struct PodTemplateSpec: Codable, Sendable, Equatable {
    public var metadata: ObjectMeta?
    public var spec: PodSpec?

    public init(metadata: ObjectMeta?, spec: PodSpec) {
        self.metadata = metadata
        self.spec = spec
    }
}

public struct PodSpec: Codable, Sendable, Equatable {
    public var restartPolicy: String?
    public var automountServiceAccountToken: Bool?
    public var enableServiceLinks: Bool?
    public var serviceAccountName: String?
    public var terminationGracePeriodSeconds: Int?
    public var securityContext: PodSecurityContext?
    public var containers: [Container]?
    public var volumes: [Volume]?
    public var nodeSelector: [String: String]?
    public var tolerations: [Toleration]?
    public var nodeName: String?

    public init(containers: [Container]) { self.containers = containers }
}

public struct PodSecurityContext: Codable, Sendable, Equatable {
    public var runAsNonRoot: Bool?
    public var runAsUser: Int?
    public var runAsGroup: Int?
    public var fsGroup: Int?
    public var seccompProfile: SeccompProfile?
    public init(
        runAsNonRoot: Bool? = nil, runAsUser: Int? = nil, runAsGroup: Int? = nil, fsGroup: Int? = nil,
        seccompProfile: SeccompProfile? = nil
    ) {
        self.runAsNonRoot = runAsNonRoot
        self.runAsUser = runAsUser
        self.runAsGroup = runAsGroup
        self.fsGroup = fsGroup
        self.seccompProfile = seccompProfile
    }
}

public struct SeccompProfile: Codable, Sendable, Equatable {
    public var type: String
    public init(type: String) { self.type = type }
}

public struct Container: Codable, Sendable, Equatable {
    public var name: String
    public var image: String?
    public var imagePullPolicy: String?
    public var command: [String]?
    public var args: [String]?
    public var workingDir: String?
    public var env: [EnvVar]?
    public var resources: ResourceRequirements?
    public var securityContext: SecurityContext?
    public var volumeMounts: [VolumeMount]?

    public init(name: String, image: String) {
        self.name = name
        self.image = image
    }
}

public struct EnvVar: Codable, Sendable, Equatable {
    public var name: String
    public var value: String?
    public var valueFrom: EnvVarSource?

    public init(name: String, value: String) {
        self.name = name
        self.value = value
    }

    public init(name: String, secret: String, key: String) {
        self.name = name
        self.valueFrom = EnvVarSource(secretKeyRef: SecretKeySelector(name: secret, key: key))
    }
}

public struct EnvVarSource: Codable, Sendable, Equatable {
    public var secretKeyRef: SecretKeySelector?
}

public struct SecretKeySelector: Codable, Sendable, Equatable {
    public var name: String
    public var key: String
    public var optional: Bool?
    public init(name: String, key: String) {
        self.name = name
        self.key = key
    }
}

public struct ResourceRequirements: Codable, Sendable, Equatable {
    public var requests: [String: String]?
    public var limits: [String: String]?
    public init(requests: [String: String]? = nil, limits: [String: String]? = nil) {
        self.requests = requests
        self.limits = limits
    }
}

public struct SecurityContext: Codable, Sendable, Equatable {
    public var allowPrivilegeEscalation: Bool?
    public var privileged: Bool?
    public var readOnlyRootFilesystem: Bool?
    public var runAsNonRoot: Bool?
    public var runAsUser: Int?
    public var capabilities: Capabilities?
    public var seccompProfile: SeccompProfile?
    public init() {}
}

public struct Capabilities: Codable, Sendable, Equatable {
    public var add: [String]?
    public var drop: [String]?
    public init(add: [String]? = nil, drop: [String]? = nil) {
        self.add = add
        self.drop = drop
    }
}

public struct Volume: Codable, Sendable, Equatable {
    public var name: String
    public var emptyDir: EmptyDirVolumeSource?
    public init(name: String, emptyDir: EmptyDirVolumeSource) {
        self.name = name
        self.emptyDir = emptyDir
    }
}

public struct EmptyDirVolumeSource: Codable, Sendable, Equatable {
    public var medium: String?
    public var sizeLimit: String?
    public init(medium: String? = nil, sizeLimit: String? = nil) {
        self.medium = medium
        self.sizeLimit = sizeLimit
    }
}

public struct VolumeMount: Codable, Sendable, Equatable {
    public var name: String
    public var mountPath: String
    public var readOnly: Bool?
    public init(name: String, mountPath: String, readOnly: Bool? = nil) {
        self.name = name
        self.mountPath = mountPath
        self.readOnly = readOnly
    }
}

public struct Toleration: Codable, Sendable, Equatable {
    public var key: String?
    public var `operator`: String?
    public var value: String?
    public var effect: String?
    public var tolerationSeconds: Int?
    public init(
        key: String? = nil, operator: String? = nil, value: String? = nil, effect: String? = nil,
        tolerationSeconds: Int? = nil
    ) {
        self.key = key
        self.operator = `operator`
        self.value = value
        self.effect = effect
        self.tolerationSeconds = tolerationSeconds
    }
}

public struct Pod: Codable, Sendable, Equatable {
    public var apiVersion: String?
    public var kind: String?
    public var metadata: ObjectMeta
    public var spec: PodSpec?
    public var status: PodStatus?
}

public struct PodStatus: Codable, Sendable, Equatable {
    public var phase: String?
    public var reason: String?
    public var message: String?
    public var containerStatuses: [ContainerStatus]?
}

public struct ContainerStatus: Codable, Sendable, Equatable {
    public var name: String
    public var state: ContainerState?
    public var lastState: ContainerState?
    public var ready: Bool?
    public var restartCount: Int?
}

public struct ContainerState: Codable, Sendable, Equatable {
    public struct Waiting: Codable, Sendable, Equatable {
        public var reason: String?
        public var message: String?
    }
    public struct Running: Codable, Sendable, Equatable {
        public var startedAt: String?
    }
    public struct Terminated: Codable, Sendable, Equatable {
        public var exitCode: Int
        public var signal: Int?
        public var reason: String?
        public var message: String?
        public var startedAt: String?
        public var finishedAt: String?
    }
    public var waiting: Waiting?
    public var running: Running?
    public var terminated: Terminated?
}

public struct Secret: Codable, Sendable, Equatable {
    public var apiVersion: String?
    public var kind: String?
    public var metadata: ObjectMeta
    public var type: String?
    /// Values base64-encoded, as on the wire.
    public var data: [String: String]?
    public var immutable: Bool?

    public init(metadata: ObjectMeta, values: [String: String], immutable: Bool = true) {
        self.apiVersion = "v1"
        self.kind = "Secret"
        self.metadata = metadata
        self.type = "Opaque"
        self.data = values.mapValues { Data($0.utf8).base64EncodedString() }
        self.immutable = immutable
    }

    /// A decoded value.
    public func value(_ key: String) -> String? {
        data?[key].flatMap { Data(base64Encoded: $0) }.map { String(decoding: $0, as: UTF8.self) }
    }
}

public struct ListMeta: Codable, Sendable, Equatable {
    public var resourceVersion: String?
    public var `continue`: String?
    public var remainingItemCount: Int?
    public init(resourceVersion: String? = nil, continue: String? = nil, remainingItemCount: Int? = nil) {
        self.resourceVersion = resourceVersion
        self.continue = `continue`
        self.remainingItemCount = remainingItemCount
    }
}

/// A list reply (JobList, PodList); its items carry no kind/apiVersion.
public struct KubernetesList<Item: Codable & Sendable & Equatable>: Codable, Sendable, Equatable {
    public var apiVersion: String?
    public var kind: String?
    public var metadata: ListMeta
    public var items: [Item]
}

/// The `kind: Status` body of every error (and of a Background delete).
public struct KubernetesStatus: Codable, Sendable, Equatable {
    public struct Details: Codable, Sendable, Equatable {
        public var name: String?
        public var group: String?
        public var kind: String?
        public var uid: String?
        public var causes: [Cause]?
        public var retryAfterSeconds: Int?
    }
    public struct Cause: Codable, Sendable, Equatable {
        public var reason: String?
        public var message: String?
        public var field: String?
    }
    public var kind: String?
    public var apiVersion: String?
    public var metadata: ListMeta?
    public var status: String?
    public var message: String?
    public var reason: String?
    public var details: Details?
    public var code: Int?
}

/// One line of a watch stream.
public enum WatchEvent<Object: Codable & Sendable>: Sendable {
    case added(Object)
    case modified(Object)
    case deleted(Object)
    /// Only the resourceVersion is meaningful.
    case bookmark(resourceVersion: String?)
}
