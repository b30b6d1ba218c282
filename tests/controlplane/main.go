// Command keyward-controlplane is a real, local Kubernetes control plane for Keyward's tests and `keyward dev`.
//
// One binary, several roles:
//
//	up --dir DIR [--exit-on-stdin-close]   embedded etcd + kube-apiserver + kube-controller-manager;
//	                                       writes DIR/kubeconfig and prints "READY DIR/kubeconfig"
//	kubectl ...                            upstream kubectl, built from the same Kubernetes version
//	apiserver ... / controller-manager ... internal: the roles `up` re-executes itself as
//
// kube-apiserver and kube-controller-manager run as child processes of `up` (re-executing this binary), because
// each installs its own signal handler and may be constructed only once per process; running them as children also
// lets `up` stop them cleanly and restart the API server on the same etcd.
//
// Restarting the API server (for fault tests): SIGUSR1 to `up` stops the kube-apiserver child (SIGTERM, SIGKILL
// after 10 s); SIGUSR2 starts a new one with the same arguments (same port, etcd and certificates) and waits until
// it is ready. A stop while stopped and a start while running change nothing. etcd and kube-controller-manager keep
// running throughout. NB: a stop is in practice a kill: with watches open, kube-apiserver's graceful shutdown waits
// for them up to its 60 s request timeout, so it is still running when the 10 s are up.
//
// `up` reports the API server's state in DIR/apiserver.state, replaced atomically, as one line "STATE N": N counts
// the stops so far, and STATE is "ready" (serving; "ready 0" before READY is printed), "stopped", "starting" or
// "failed" (the new API server did not become ready: see DIR/apiserver.log; SIGUSR2 tries again). A caller waits
// for "stopped N+1" after SIGUSR1 and for "ready N" after SIGUSR2.
//
// NB: after READY, `up` never writes to standard output: the caller may have closed its end of the pipe, and a
// write to a closed pipe on fd 1 kills a Go program. Diagnostics go to standard error.
package main

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/component-base/cli"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	cmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	role, args := os.Args[1], os.Args[2:]
	switch role {
	case "up":
		if err := up(args); err != nil {
			fmt.Fprintf(os.Stderr, "controlplane up: %v\n", err)
			os.Exit(1)
		}
	case "kubectl":
		cmd := kubectlcmd.NewDefaultKubectlCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "apiserver":
		cmd := apiserverapp.NewAPIServerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "controller-manager":
		cmd := cmapp.NewControllerManagerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	default:
		usage()
		os.Exit(2)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: keyward-controlplane up --dir DIR [--exit-on-stdin-close] | kubectl ARGS...")
}

// controllers run by kube-controller-manager: enough for garbage collection, namespace deletion, Deployments that
// get ReplicaSets (and Pending pods: there is no scheduler or kubelet), and service-account tokens.
var controllers = "garbage-collector-controller,namespace-controller,deployment-controller,replicaset-controller," +
	"statefulset-controller,daemonset-controller,serviceaccount-controller,serviceaccount-token-controller"

func up(args []string) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	dir := fs.String("dir", "", "state directory (etcd data, certificates, kubeconfig, logs)")
	stdinClose := fs.Bool("exit-on-stdin-close", false, "shut down when standard input closes (the parent died)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("--dir is required")
	}
	d, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(d, 0o700); err != nil {
		return err
	}
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]

	pki, err := writePKI(d)
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	kubeconfig := filepath.Join(d, "kubeconfig")
	server := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	if err := writeKubeconfig(kubeconfig, server, pki); err != nil {
		return err
	}

	etcd, err := startEtcd(filepath.Join(d, "etcd"), etcdClient, etcdPeer)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer etcd.Close()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// NB: registered before READY, so that a restart request can never meet the default action of SIGUSR1/2
	// (which is to terminate the process).
	restarts := make(chan os.Signal, 8)
	signal.Notify(restarts, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(restarts)
	if *stdinClose {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			stop()
		}()
	}

	apiArgs := []string{
		"--etcd-servers=" + fmt.Sprintf("http://127.0.0.1:%d", etcdClient),
		"--bind-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(apiPort),
		"--advertise-address=" + advertiseAddress(),
		"--cert-dir=" + filepath.Join(d, "pki"),
		"--tls-cert-file=" + pki.serverCert,
		"--tls-private-key-file=" + pki.serverKey,
		"--client-ca-file=" + pki.caCert,
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=10.0.0.0/24",
		"--allow-privileged=true",
		"--disable-admission-plugins=ServiceAccount",
		"--service-account-issuer=" + server + "/",
		"--service-account-key-file=" + pki.saKey,
		"--service-account-signing-key-file=" + pki.saKey,
		"--endpoint-reconciler-type=none",
		"--v=0",
	}
	apiserver, err := startAPIServer(ctx, d, apiArgs, server, pki)
	if err != nil {
		return err
	}
	state := apiserverState{path: filepath.Join(d, "apiserver.state")}
	state.set("ready", 0)
	cmArgs := []string{
		"--kubeconfig=" + kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
		"--controllers=" + controllers,
		"--service-account-private-key-file=" + pki.saKey,
		"--root-ca-file=" + pki.caCert,
		"--use-service-account-credentials=false",
		"--concurrent-gc-syncs=5",
		"--v=0",
	}
	cm, err := startChild(d, "controller-manager", cmArgs)
	if err != nil {
		apiserver.stop()
		return err
	}
	fmt.Printf("READY %s\n", kubeconfig)
	// NB: nothing may be written to standard output from here on (see the package comment).

	for {
		// While the API server is stopped on request, its (nil) done channel never fires.
		var apiDone <-chan struct{}
		if apiserver != nil {
			apiDone = apiserver.done
		}
		select {
		case <-ctx.Done():
		case <-apiDone:
			fmt.Fprintf(os.Stderr, "kube-apiserver exited: see %s\n", apiserver.log)
		case <-cm.done:
			fmt.Fprintf(os.Stderr, "kube-controller-manager exited: see %s\n", cm.log)
		case sig := <-restarts:
			switch {
			case sig == syscall.SIGUSR1 && apiserver != nil:
				fmt.Fprintln(os.Stderr, "stopping kube-apiserver on request")
				apiserver.stop()
				apiserver = nil
				state.set("stopped", state.n+1)
			case sig == syscall.SIGUSR2 && apiserver == nil:
				fmt.Fprintln(os.Stderr, "starting kube-apiserver on request")
				state.set("starting", state.n)
				apiserver, err = restartAPIServer(ctx, d, apiArgs, server, pki)
				if err != nil {
					fmt.Fprintf(os.Stderr, "%v\n", err)
					state.set("failed", state.n)
				} else {
					state.set("ready", state.n)
				}
			case sig == syscall.SIGUSR1:
				// Already stopped (or a restart failed): say so again, for a caller polling the file.
				state.set("stopped", state.n)
			default:
				// Already running.
				state.set("ready", state.n)
			}
			continue
		}
		break
	}
	cm.stop()
	if apiserver != nil {
		apiserver.stop()
	}
	return nil
}

// startAPIServer starts a kube-apiserver child and waits until it is ready; it stops the child if it never is.
func startAPIServer(ctx context.Context, dir string, args []string, server string, pki *pkiFiles) (*child, error) {
	apiserver, err := startChild(dir, "apiserver", args)
	if err != nil {
		return nil, err
	}
	// Stop waiting as soon as the child exits: it will not become ready.
	readyCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-apiserver.done:
			cancel(errors.New("kube-apiserver exited"))
		case <-readyCtx.Done():
		}
	}()
	if err := waitReady(readyCtx, server, pki); err != nil {
		apiserver.stop()
		if cause := context.Cause(readyCtx); cause != nil && ctx.Err() == nil {
			err = cause
		}
		return nil, fmt.Errorf("kube-apiserver did not become ready (see %s): %w", apiserver.log, err)
	}
	return apiserver, nil
}

// restartAPIServer is startAPIServer, tried a few times. NB: while the API server is down, a client connecting to
// its port in a loop can, rarely, be given that very port as its own local port (a TCP self-connection), and the
// new API server then fails to bind; the port is free again a moment later.
func restartAPIServer(ctx context.Context, dir string, args []string, server string, pki *pkiFiles) (*child, error) {
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		var c *child
		if c, err = startAPIServer(ctx, dir, args, server, pki); err == nil || ctx.Err() != nil {
			return c, err
		}
		fmt.Fprintf(os.Stderr, "restart attempt %d: %v\n", attempt, err)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return nil, err
}

// apiserverState is DIR/apiserver.state: "WORD N", where N counts the stops on request (see the package comment).
type apiserverState struct {
	path string
	word string
	n    int
}

// set records the state in memory and replaces the file atomically (a reader never sees a partial line).
func (s *apiserverState) set(word string, n int) {
	s.word, s.n = word, n
	tmp := s.path + ".tmp"
	err := os.WriteFile(tmp, []byte(fmt.Sprintf("%s %d\n", word, n)), 0o600)
	if err == nil {
		err = os.Rename(tmp, s.path)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "cannot write %s: %v\n", s.path, err)
	}
}

// child is a role of this binary running as a child process, its output in DIR/ROLE.log.
type child struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func startChild(dir, role string, args []string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, role+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, append([]string{role}, args...)...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// NB: if `up` is SIGKILLed it cannot stop its children; the kernel does it for us.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", role, err)
	}
	c := &child{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(c.done)
	}()
	return c, nil
}

// stop asks the child to terminate and kills it if it has not within 10 seconds.
func (c *child) stop() {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

func startEtcd(dataDir string, clientPort, peerPort int) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "keyward"
	cfg.Dir = dataDir
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{dataDir + ".log"}
	cu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", clientPort)}
	pu := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	// A throw-away test store: durability on power loss is worth nothing here, speed is.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("etcd not ready after 60s")
	}
}

// advertiseAddress picks a non-loopback IPv4 address of this machine. NB: with a loopback bind address the API
// server derives its advertise address from the default route and refuses to start without one.
func advertiseAddress() string {
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
				return ipn.IP.String()
			}
		}
	}
	// No usable interface: a documentation address; nothing ever connects to it with --endpoint-reconciler-type=none.
	return "192.0.2.1"
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitReady polls /readyz and the default namespace as the admin user.
func waitReady(ctx context.Context, server string, pki *pkiFiles) error {
	cert, err := tls.LoadX509KeyPair(pki.adminCert, pki.adminKey)
	if err != nil {
		return err
	}
	caPEM, err := os.ReadFile(pki.caCert)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}},
	}
	ok := func(path string) bool {
		resp, err := client.Get(server + path)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode == http.StatusOK
	}
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		if ok("/readyz") && ok("/api/v1/namespaces/default") {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return errors.New("timed out after 3m")
}

type pkiFiles struct {
	caCert, serverCert, serverKey, adminCert, adminKey, saKey string
}

// writePKI creates a CA, a serving certificate for 127.0.0.1/localhost, an admin client certificate in group
// system:masters and a service-account signing key. NB: the kubeconfig must carry the CA itself, not the serving
// certificate, or rustls rejects the chain with UnknownIssuer.
func writePKI(dir string) (*pkiFiles, error) {
	p := filepath.Join(dir, "pki")
	if err := os.MkdirAll(p, 0o700); err != nil {
		return nil, err
	}
	f := &pkiFiles{
		caCert: filepath.Join(p, "ca.crt"), serverCert: filepath.Join(p, "server.crt"),
		serverKey: filepath.Join(p, "server.key"), adminCert: filepath.Join(p, "admin.crt"),
		adminKey: filepath.Join(p, "admin.key"), saKey: filepath.Join(p, "sa.key"),
	}
	now := time.Now()
	caKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "keyward-controlplane-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true, IsCA: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	if err := writePEM(f.caCert, "CERTIFICATE", caDER); err != nil {
		return nil, err
	}
	issue := func(serial int64, tmpl *x509.Certificate, certPath, keyPath string) error {
		key, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return err
		}
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = now.Add(-time.Hour), now.Add(10*365*24*time.Hour)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		if err := writePEM(certPath, "CERTIFICATE", der); err != nil {
			return err
		}
		return writePEM(keyPath, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(key))
	}
	if err := issue(2, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
	}, f.serverCert, f.serverKey); err != nil {
		return nil, err
	}
	if err := issue(3, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}, f.adminCert, f.adminKey); err != nil {
		return nil, err
	}
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	if err := writePEM(f.saKey, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey)); err != nil {
		return nil, err
	}
	return f, nil
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

func writeKubeconfig(path, server string, pki *pkiFiles) error {
	read := func(p string) (string, error) {
		b, err := os.ReadFile(p)
		if err != nil {
			return "", err
		}
		return base64.StdEncoding.EncodeToString(b), nil
	}
	ca, err := read(pki.caCert)
	if err != nil {
		return err
	}
	crt, err := read(pki.adminCert)
	if err != nil {
		return err
	}
	key, err := read(pki.adminKey)
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: keyward
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: admin
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: keyward
  context:
    cluster: keyward
    user: admin
    namespace: default
current-context: keyward
`, server, ca, crt, key)
	return os.WriteFile(path, []byte(cfg), 0o600)
}
