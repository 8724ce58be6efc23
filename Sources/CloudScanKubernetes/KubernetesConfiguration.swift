import Foundation
import Yams

/// Where the Kubernetes API server is and how to reach it: in-cluster (service-account files) or
/// a kubeconfig. TLS verification is always on; a kubeconfig asking to skip it is refused.
public struct KubernetesConfiguration: Sendable {
    /// `https://host:port` (no trailing slash).
    public var server: String
    public var namespace: String
    public var caFile: String?
    public var caPEM: [UInt8]?
    public var clientCertificateFile: String?
    public var clientKeyFile: String?
    public var clientCertificatePEM: [UInt8]?
    public var clientKeyPEM: [UInt8]?
    /// A fixed bearer token.
    public var token: String?
    /// A bearer token file, re-read when it changes (the kubelet rotates projected tokens).
    public var tokenFile: String?
    /// Its first word (before `/`) is what the API server records as the field manager.
    public var userAgent: String

    public init(
        server: String, namespace: String = "default", caFile: String? = nil, caPEM: [UInt8]? = nil,
        clientCertificateFile: String? = nil, clientKeyFile: String? = nil, clientCertificatePEM: [UInt8]? = nil,
        clientKeyPEM: [UInt8]? = nil, token: String? = nil, tokenFile: String? = nil,
        userAgent: String = "cloudscan-dispatcher/0.1.0 (linux/amd64) swift"
    ) {
        self.server = server.hasSuffix("/") ? String(server.dropLast()) : server
        self.namespace = namespace
        self.caFile = caFile
        self.caPEM = caPEM
        self.clientCertificateFile = clientCertificateFile
        self.clientKeyFile = clientKeyFile
        self.clientCertificatePEM = clientCertificatePEM
        self.clientKeyPEM = clientKeyPEM
        self.token = token
        self.tokenFile = tokenFile
        self.userAgent = userAgent
    }

    public static let serviceAccountDirectory = "/var/run/secrets/kubernetes.io/serviceaccount"

    /// Inside a pod: `KUBERNETES_SERVICE_HOST`/`_PORT`, and the service account's token, CA and
    /// namespace files.
    public static func inCluster(
        environment: [String: String] = ProcessInfo.processInfo.environment,
        serviceAccountDirectory: String = serviceAccountDirectory
    ) throws -> KubernetesConfiguration {
        guard let host = environment["KUBERNETES_SERVICE_HOST"], !host.isEmpty,
            let port = environment["KUBERNETES_SERVICE_PORT"], !port.isEmpty
        else {
            throw KubernetesConfigurationError(
                "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set: not running in a cluster")
        }
        let directory = URL(fileURLWithPath: serviceAccountDirectory)
        let tokenFile = directory.appendingPathComponent("token").path
        let caFile = directory.appendingPathComponent("ca.crt").path
        guard FileManager.default.isReadableFile(atPath: tokenFile) else {
            throw KubernetesConfigurationError("no service-account token at \(tokenFile)")
        }
        guard FileManager.default.isReadableFile(atPath: caFile) else {
            throw KubernetesConfigurationError("no cluster CA at \(caFile)")
        }
        let namespace =
            (try? String(contentsOfFile: directory.appendingPathComponent("namespace").path, encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? "default"
        let hostPart = host.contains(":") ? "[\(host)]" : host  // IPv6
        return KubernetesConfiguration(
            server: "https://\(hostPart):\(port)", namespace: namespace.isEmpty ? "default" : namespace,
            caFile: caFile, tokenFile: tokenFile)
    }

    /// From a kubeconfig file: its current context (or `context`), that context's cluster, user and
    /// namespace. Relative file paths are taken from the kubeconfig's directory.
    public static func kubeconfig(path: String, context wanted: String? = nil) throws -> KubernetesConfiguration {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw KubernetesConfigurationError("cannot read kubeconfig \(path): \(error.localizedDescription)")
        }
        let document: KubeconfigFile
        do { document = try YAMLDecoder().decode(KubeconfigFile.self, from: text) } catch {
            throw KubernetesConfigurationError("kubeconfig \(path) is not valid: \(error)")
        }
        guard let contextName = wanted ?? document.currentContext, !contextName.isEmpty else {
            throw KubernetesConfigurationError("kubeconfig \(path) has no current-context")
        }
        guard let context = document.contexts?.first(where: { $0.name == contextName })?.context else {
            throw KubernetesConfigurationError("kubeconfig \(path) has no context \"\(contextName)\"")
        }
        guard let cluster = document.clusters?.first(where: { $0.name == context.cluster })?.cluster else {
            throw KubernetesConfigurationError(
                "kubeconfig \(path): context \"\(contextName)\" names an unknown cluster")
        }
        guard let server = cluster.server, !server.isEmpty else {
            throw KubernetesConfigurationError("kubeconfig \(path): cluster \"\(context.cluster)\" has no server")
        }
        if cluster.insecureSkipTLSVerify == true {
            throw KubernetesConfigurationError(
                "kubeconfig \(path): cluster \"\(context.cluster)\" sets insecure-skip-tls-verify; cloudscan always verifies TLS"
            )
        }
        let user = context.user.flatMap { name in document.users?.first(where: { $0.name == name })?.user }
        let base = URL(fileURLWithPath: path).deletingLastPathComponent()
        func file(_ value: String?) -> String? {
            guard let value, !value.isEmpty else { return nil }
            return value.hasPrefix("/") ? value : base.appendingPathComponent(value).path
        }
        func pem(_ base64: String?, _ what: String) throws -> [UInt8]? {
            guard let base64, !base64.isEmpty else { return nil }
            guard let data = Data(base64Encoded: base64, options: .ignoreUnknownCharacters) else {
                throw KubernetesConfigurationError("kubeconfig \(path): \(what) is not base64")
            }
            return Array(data)
        }
        return KubernetesConfiguration(
            server: server, namespace: context.namespace ?? "default",
            caFile: file(cluster.certificateAuthority),
            caPEM: try pem(cluster.certificateAuthorityData, "certificate-authority-data"),
            clientCertificateFile: file(user?.clientCertificate), clientKeyFile: file(user?.clientKey),
            clientCertificatePEM: try pem(user?.clientCertificateData, "client-certificate-data"),
            clientKeyPEM: try pem(user?.clientKeyData, "client-key-data"),
            token: user?.token, tokenFile: file(user?.tokenFile))
    }

    /// The seed's settings: `KUBE_IN_CLUSTER=true` → in-cluster; otherwise `KUBECONFIG` (first
    /// path) or `~/.kube/config`. `KUBE_NAMESPACE` overrides the namespace either way.
    public static func fromEnvironment(
        _ environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws -> KubernetesConfiguration {
        var configuration: KubernetesConfiguration
        if ["1", "true", "yes"].contains(environment["KUBE_IN_CLUSTER"]?.lowercased() ?? "") {
            configuration = try inCluster(environment: environment)
        } else {
            let path =
                environment["KUBECONFIG"].flatMap { $0.split(separator: ":").first.map(String.init) }
                ?? "\(environment["HOME"] ?? NSHomeDirectory())/.kube/config"
            configuration = try kubeconfig(path: path)
        }
        if let namespace = environment["KUBE_NAMESPACE"], !namespace.isEmpty { configuration.namespace = namespace }
        return configuration
    }
}

public struct KubernetesConfigurationError: Error, CustomStringConvertible, Sendable {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// The parts of a kubeconfig cloudscan reads.
struct KubeconfigFile: Decodable {
    struct NamedCluster: Decodable {
        var name: String
        var cluster: Cluster
    }
    struct Cluster: Decodable {
        var server: String?
        var certificateAuthority: String?
        var certificateAuthorityData: String?
        var insecureSkipTLSVerify: Bool?
        enum CodingKeys: String, CodingKey {
            case server
            case certificateAuthority = "certificate-authority"
            case certificateAuthorityData = "certificate-authority-data"
            case insecureSkipTLSVerify = "insecure-skip-tls-verify"
        }
    }
    struct NamedUser: Decodable {
        var name: String
        var user: User
    }
    struct User: Decodable {
        var token: String?
        var tokenFile: String?
        var clientCertificate: String?
        var clientCertificateData: String?
        var clientKey: String?
        var clientKeyData: String?
        enum CodingKeys: String, CodingKey {
            case token, tokenFile
            case clientCertificate = "client-certificate"
            case clientCertificateData = "client-certificate-data"
            case clientKey = "client-key"
            case clientKeyData = "client-key-data"
        }
    }
    struct NamedContext: Decodable {
        var name: String
        var context: Context
    }
    struct Context: Decodable {
        var cluster: String
        var user: String?
        var namespace: String?
    }
    var clusters: [NamedCluster]?
    var users: [NamedUser]?
    var contexts: [NamedContext]?
    var currentContext: String?
    enum CodingKeys: String, CodingKey {
        case clusters, users, contexts
        case currentContext = "current-context"
    }
}
