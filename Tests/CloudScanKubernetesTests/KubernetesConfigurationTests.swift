import Foundation
import Testing

@testable import CloudScanKubernetes

@Suite("Kubernetes configuration (kubeconfig, in-cluster, environment)")
struct KubernetesConfigurationTests {
    func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("kube-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    @Test("kubeconfig: current context's cluster, user and namespace; inline data decoded; relative files resolved")
    func kubeconfig() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let ca = Data("-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n".utf8).base64EncodedString()
        let text = """
            apiVersion: v1
            kind: Config
            current-context: prod
            clusters:
            - name: dev-cluster
              cluster:
                server: https://dev.example:6443
                certificate-authority: certs/dev-ca.crt
            - name: prod-cluster
              cluster:
                server: https://10.0.0.1:6443/
                certificate-authority-data: \(ca)
            users:
            - name: robot
              user:
                token: s3cret
            - name: person
              user:
                client-certificate: certs/me.crt
                client-key: /abs/me.key
            contexts:
            - name: dev
              context: {cluster: dev-cluster, user: person}
            - name: prod
              context: {cluster: prod-cluster, user: robot, namespace: scanners}
            """
        let path = directory.appendingPathComponent("config").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        let prod = try KubernetesConfiguration.kubeconfig(path: path)
        #expect(prod.server == "https://10.0.0.1:6443")
        #expect(prod.namespace == "scanners")
        #expect(prod.token == "s3cret")
        #expect(prod.caPEM.map { String(decoding: $0, as: UTF8.self) }?.contains("BEGIN CERTIFICATE") == true)
        let dev = try KubernetesConfiguration.kubeconfig(path: path, context: "dev")
        #expect(dev.server == "https://dev.example:6443")
        #expect(dev.namespace == "default")
        #expect(dev.caFile == directory.appendingPathComponent("certs/dev-ca.crt").path)
        #expect(dev.clientCertificateFile == directory.appendingPathComponent("certs/me.crt").path)
        #expect(dev.clientKeyFile == "/abs/me.key")
        #expect(dev.token == nil)
        #expect(throws: KubernetesConfigurationError.self) {
            try KubernetesConfiguration.kubeconfig(path: path, context: "nope")
        }
        // Skipping TLS verification is refused, not honoured.
        try text.replacingOccurrences(of: "certificate-authority-data: \(ca)", with: "insecure-skip-tls-verify: true")
            .write(toFile: path, atomically: true, encoding: .utf8)
        let refused = #expect(throws: KubernetesConfigurationError.self) {
            try KubernetesConfiguration.kubeconfig(path: path)
        }
        #expect(refused?.description.contains("insecure-skip-tls-verify") == true)
    }

    @Test("in-cluster: service host and port, token/CA/namespace files; KUBE_IN_CLUSTER and KUBE_NAMESPACE")
    func inCluster() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        try "token-1".write(to: directory.appendingPathComponent("token"), atomically: true, encoding: .utf8)
        try "CA".write(to: directory.appendingPathComponent("ca.crt"), atomically: true, encoding: .utf8)
        try "scans\n".write(to: directory.appendingPathComponent("namespace"), atomically: true, encoding: .utf8)
        let environment = ["KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"]
        let configuration = try KubernetesConfiguration.inCluster(
            environment: environment, serviceAccountDirectory: directory.path)
        #expect(configuration.server == "https://[fd00::1]:443")
        #expect(configuration.namespace == "scans")
        #expect(configuration.tokenFile == directory.appendingPathComponent("token").path)
        #expect(configuration.caFile == directory.appendingPathComponent("ca.crt").path)
        #expect(throws: KubernetesConfigurationError.self) {
            try KubernetesConfiguration.inCluster(environment: [:], serviceAccountDirectory: directory.path)
        }
        // The token file is re-read when the kubelet rotates it.
        let source = TokenSource(file: directory.appendingPathComponent("token").path)
        #expect(try source.current() == "token-1")
        try "token-2".write(to: directory.appendingPathComponent("token"), atomically: true, encoding: .utf8)
        source.invalidate()
        #expect(try source.current() == "token-2")

        let kubeconfig = directory.appendingPathComponent("config")
        try """
        current-context: c
        clusters: [{name: k, cluster: {server: "https://k:6443"}}]
        users: [{name: u, user: {tokenFile: token}}]
        contexts: [{name: c, context: {cluster: k, user: u, namespace: ns1}}]
        """.write(to: kubeconfig, atomically: true, encoding: .utf8)
        let fromKubeconfig = try KubernetesConfiguration.fromEnvironment([
            "KUBECONFIG": kubeconfig.path + ":/elsewhere", "KUBE_NAMESPACE": "override",
        ])
        #expect(fromKubeconfig.server == "https://k:6443")
        #expect(fromKubeconfig.namespace == "override")
        #expect(fromKubeconfig.tokenFile == directory.appendingPathComponent("token").path)
    }
}
