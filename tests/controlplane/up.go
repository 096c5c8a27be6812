package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/server/v3/embed"
	"golang.org/x/sys/unix"
)

// settings are the flags of `controlplane up`.
type settings struct {
	dir                    string
	hpaSyncPeriod          time.Duration
	nodeMonitorGracePeriod time.Duration
	apiserverArgs          multiFlag
	controllerManagerArgs  multiFlag
	serviceClusterIPRange  string
	serviceAccountIssuer   string
	readyTimeout           time.Duration
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// ports are chosen once and kept in DIR/ports.json, so that a restarted
// component listens where its clients expect it.
type ports struct {
	EtcdClient        int `json:"etcdClient"`
	EtcdPeer          int `json:"etcdPeer"`
	APIServer         int `json:"apiserver"`
	ControllerManager int `json:"controllerManager"`
	Scheduler         int `json:"scheduler"`
	Control           int `json:"control"`
}

// ready is DIR/ready.json: what a test needs to use this control plane.
type ready struct {
	Server            string `json:"server"`
	Kubeconfig        string `json:"kubeconfig"`
	CA                string `json:"ca"`
	Token             string `json:"token"`
	Control           string `json:"control"`
	ServiceAccountKey string `json:"serviceAccountKey"`
	Pid               int    `json:"pid"`
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func up(args []string) error {
	var s settings
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	fs.StringVar(&s.dir, "dir", "", "folder for certificates, etcd data, logs and ready.json")
	fs.DurationVar(&s.hpaSyncPeriod, "hpa-sync-period", 15*time.Second, "kube-controller-manager --horizontal-pod-autoscaler-sync-period")
	fs.DurationVar(&s.nodeMonitorGracePeriod, "node-monitor-grace-period", 40*time.Second, "kube-controller-manager --node-monitor-grace-period")
	fs.Var(&s.apiserverArgs, "apiserver-arg", "one more kube-apiserver flag (repeatable)")
	fs.Var(&s.controllerManagerArgs, "controller-manager-arg", "one more kube-controller-manager flag (repeatable)")
	fs.StringVar(&s.serviceClusterIPRange, "service-cluster-ip-range", "10.96.0.0/16", "Service ClusterIP range")
	fs.StringVar(&s.serviceAccountIssuer, "service-account-issuer", "https://kubernetes.default.svc.cluster.local", "service-account token issuer")
	fs.DurationVar(&s.readyTimeout, "ready-timeout", 3*time.Minute, "how long the API server may take to become ready")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if s.dir == "" {
		return errors.New("--dir is required")
	}
	// Stop with the process that started us: a test run that dies leaves no cluster behind.
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0, 0, 0); err != nil {
		return fmt.Errorf("prctl: %w", err)
	}
	dir, err := filepath.Abs(s.dir)
	if err != nil {
		return err
	}
	s.dir = dir
	if err := os.MkdirAll(filepath.Join(dir, "pki"), 0o700); err != nil {
		return err
	}
	p, err := loadPorts(dir)
	if err != nil {
		return err
	}
	tokens, err := preparePKI(dir)
	if err != nil {
		return err
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", p.APIServer)
	pki := filepath.Join(dir, "pki")
	for user, file := range map[string]string{
		"admin":                          "admin.kubeconfig",
		"system:kube-controller-manager": "controller-manager.kubeconfig",
		"system:kube-scheduler":          "scheduler.kubeconfig",
	} {
		if err := kubeconfig(filepath.Join(dir, file), server, filepath.Join(pki, "ca.crt"), user, tokens[user]); err != nil {
			return err
		}
	}

	etcd, err := startEtcd(dir, p)
	if err != nil {
		return err
	}
	defer etcd.Close()

	cp := &plane{settings: s, ports: p, server: server, adminToken: tokens["admin"], children: map[string]*exec.Cmd{}}
	defer cp.stopAll()
	if err := cp.start("kube-apiserver"); err != nil {
		return err
	}
	if err := cp.waitReady(s.readyTimeout); err != nil {
		return err
	}
	for _, name := range []string{"kube-controller-manager", "kube-scheduler"} {
		if err := cp.start(name); err != nil {
			return err
		}
	}
	control, err := cp.serveControl(etcd)
	if err != nil {
		return err
	}
	defer control.Close()
	info := ready{
		Server:            server,
		Kubeconfig:        filepath.Join(dir, "admin.kubeconfig"),
		CA:                filepath.Join(pki, "ca.crt"),
		Token:             tokens["admin"],
		Control:           fmt.Sprintf("http://127.0.0.1:%d", p.Control),
		ServiceAccountKey: filepath.Join(pki, "sa.key"),
		Pid:               os.Getpid(),
	}
	if err := writeJSON(filepath.Join(dir, "ready.json"), info); err != nil {
		return err
	}
	fmt.Printf("controlplane ready: %s (kubeconfig %s)\n", server, info.Kubeconfig)

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	select {
	case sig := <-signals:
		fmt.Printf("controlplane: %s, stopping\n", sig)
	case err := <-etcd.Err():
		return fmt.Errorf("etcd: %w", err)
	}
	os.Remove(filepath.Join(dir, "ready.json"))
	return nil
}

func loadPorts(dir string) (ports, error) {
	var p ports
	path := filepath.Join(dir, "ports.json")
	if data, err := os.ReadFile(path); err == nil {
		return p, json.Unmarshal(data, &p)
	}
	for _, port := range []*int{&p.EtcdClient, &p.EtcdPeer, &p.APIServer, &p.ControllerManager, &p.Scheduler, &p.Control} {
		n, err := freePort()
		if err != nil {
			return p, err
		}
		*port = n
	}
	return p, writeJSON(path, p)
}

func writeJSON(path string, value any) error {
	data, err := json.MarshalIndent(value, "", "  ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func randomToken() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// preparePKI makes (once) the cluster CA, the API server's serving
// certificate, the aggregation layer's front-proxy pair, the service-account
// signing keys, and the static tokens of the admin and of the two control
// plane components (the users the default RBAC bootstrap policy binds).
func preparePKI(dir string) (map[string]string, error) {
	pki := filepath.Join(dir, "pki")
	tokensFile := filepath.Join(pki, "tokens.csv")
	tokens := map[string]string{}
	users := []struct{ name, group string }{
		{"admin", "system:masters"},
		{"system:kube-controller-manager", ""},
		{"system:kube-scheduler", ""},
	}
	if data, err := os.ReadFile(tokensFile); err == nil {
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			fields := strings.SplitN(line, ",", 4)
			tokens[fields[1]] = fields[0]
		}
		return tokens, nil
	}
	ca, err := newAuthority(pki, "ca")
	if err != nil {
		return nil, err
	}
	hosts := []string{"127.0.0.1", "localhost", "10.96.0.1", "kubernetes", "kubernetes.default",
		"kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	if err := ca.issue(pki, "apiserver", "kube-apiserver", nil, hosts); err != nil {
		return nil, err
	}
	frontProxy, err := newAuthority(pki, "front-proxy-ca")
	if err != nil {
		return nil, err
	}
	if err := frontProxy.issue(pki, "front-proxy-client", "front-proxy-client", nil, nil); err != nil {
		return nil, err
	}
	if err := newServiceAccountKeys(pki); err != nil {
		return nil, err
	}
	var lines []string
	for i, user := range users {
		token := randomToken()
		tokens[user.name] = token
		line := fmt.Sprintf("%s,%s,uid-%d", token, user.name, i)
		if user.group != "" {
			line += fmt.Sprintf(",%q", user.group)
		}
		lines = append(lines, line)
	}
	return tokens, os.WriteFile(tokensFile, []byte(strings.Join(lines, "\n")+"\n"), 0o600)
}

func startEtcd(dir string, p ports) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "controlplane"
	cfg.Dir = filepath.Join(dir, "etcd")
	client, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", p.EtcdClient))
	peer, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", p.EtcdPeer))
	cfg.ListenClientUrls = []url.URL{*client}
	cfg.AdvertiseClientUrls = []url.URL{*client}
	cfg.ListenPeerUrls = []url.URL{*peer}
	cfg.AdvertisePeerUrls = []url.URL{*peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
	// A test cluster: its data need not survive a power cut, and fsync on
	// every write would make the suite's many writes wait on the disk.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("etcd did not become ready in 60 s")
	}
}

// plane runs the Kubernetes components as child processes of this binary.
type plane struct {
	settings   settings
	ports      ports
	server     string
	adminToken string
	mu         sync.Mutex
	children   map[string]*exec.Cmd
}

func (cp *plane) args(name string) []string {
	dir := cp.settings.dir
	pki := filepath.Join(dir, "pki")
	at := func(file string) string { return filepath.Join(pki, file) }
	switch name {
	case "kube-apiserver":
		args := []string{
			"--etcd-servers=" + fmt.Sprintf("http://127.0.0.1:%d", cp.ports.EtcdClient),
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			// The `kubernetes` Service's endpoints would name a loopback
			// address, which EndpointSlice validation refuses.
			"--endpoint-reconciler-type=none",
			"--secure-port=" + strconv.Itoa(cp.ports.APIServer),
			"--cert-dir=" + filepath.Join(dir, "apiserver"),
			"--tls-cert-file=" + at("apiserver.crt"),
			"--tls-private-key-file=" + at("apiserver.key"),
			"--client-ca-file=" + at("ca.crt"),
			"--token-auth-file=" + at("tokens.csv"),
			"--service-account-issuer=" + cp.settings.serviceAccountIssuer,
			"--service-account-key-file=" + at("sa.pub"),
			"--service-account-signing-key-file=" + at("sa.key"),
			"--service-cluster-ip-range=" + cp.settings.serviceClusterIPRange,
			"--authorization-mode=Node,RBAC",
			"--allow-privileged=true",
			"--profiling=false",
			// The aggregation layer (metrics.k8s.io, custom.metrics.k8s.io):
			// there is no kube-proxy, so it reaches the serving pods directly.
			"--enable-aggregator-routing=true",
			"--requestheader-client-ca-file=" + at("front-proxy-ca.crt"),
			"--requestheader-allowed-names=front-proxy-client",
			"--requestheader-username-headers=X-Remote-User",
			"--requestheader-group-headers=X-Remote-Group",
			"--requestheader-extra-headers-prefix=X-Remote-Extra-",
			"--proxy-client-cert-file=" + at("front-proxy-client.crt"),
			"--proxy-client-key-file=" + at("front-proxy-client.key"),
		}
		return append(args, cp.settings.apiserverArgs...)
	case "kube-controller-manager":
		kc := filepath.Join(dir, "controller-manager.kubeconfig")
		args := []string{
			"--kubeconfig=" + kc,
			"--authentication-kubeconfig=" + kc,
			"--authorization-kubeconfig=" + kc,
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(cp.ports.ControllerManager),
			"--service-account-private-key-file=" + at("sa.key"),
			"--root-ca-file=" + at("ca.crt"),
			"--use-service-account-credentials=true",
			"--controllers=*",
			"--leader-elect=false",
			"--service-cluster-ip-range=" + cp.settings.serviceClusterIPRange,
			"--horizontal-pod-autoscaler-sync-period=" + cp.settings.hpaSyncPeriod.String(),
			"--node-monitor-period=1s",
			"--node-monitor-grace-period=" + cp.settings.nodeMonitorGracePeriod.String(),
		}
		return append(args, cp.settings.controllerManagerArgs...)
	case "kube-scheduler":
		kc := filepath.Join(dir, "scheduler.kubeconfig")
		return []string{
			"--kubeconfig=" + kc,
			"--authentication-kubeconfig=" + kc,
			"--authorization-kubeconfig=" + kc,
			"--bind-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(cp.ports.Scheduler),
			"--leader-elect=false",
		}
	}
	panic("unknown component " + name)
}

func (cp *plane) start(name string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	logFile, err := os.OpenFile(filepath.Join(cp.settings.dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(self, append([]string{name}, cp.args(name)...)...)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return err
	}
	cp.mu.Lock()
	cp.children[name] = cmd
	cp.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		logFile.Close()
	}()
	return nil
}

func (cp *plane) stop(name string) {
	cp.mu.Lock()
	cmd := cp.children[name]
	delete(cp.children, name)
	cp.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		for cmd.ProcessState == nil {
			if err := cmd.Process.Signal(syscall.Signal(0)); err != nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
	}
}

func (cp *plane) stopAll() {
	for _, name := range []string{"kube-scheduler", "kube-controller-manager", "kube-apiserver"} {
		cp.stop(name)
	}
}

// waitReady waits until the API server's /readyz answers ok to the admin.
func (cp *plane) waitReady(timeout time.Duration) error {
	pool := x509.NewCertPool()
	ca, err := os.ReadFile(filepath.Join(cp.settings.dir, "pki", "ca.crt"))
	if err != nil {
		return err
	}
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		cp.mu.Lock()
		cmd := cp.children["kube-apiserver"]
		cp.mu.Unlock()
		if cmd != nil && cmd.ProcessState != nil {
			return fmt.Errorf("kube-apiserver exited: %s (see %s)", cmd.ProcessState, filepath.Join(cp.settings.dir, "kube-apiserver.log"))
		}
		req, _ := http.NewRequest("GET", cp.server+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+cp.adminToken)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("kube-apiserver not ready after %s", timeout)
}

// serveControl answers the faults a test asks for on demand:
//
//	POST /restart/kube-apiserver   stop the API server and start it again (waits for ready)
//	POST /compact                  compact etcd up to its current revision
func (cp *plane) serveControl(etcd *embed.Etcd) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /restart/{name}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("name")
		if _, ok := components[name]; !ok {
			http.Error(w, "no such component", http.StatusNotFound)
			return
		}
		cp.stop(name)
		if err := cp.start(name); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if name == "kube-apiserver" {
			if err := cp.waitReady(cp.settings.readyTimeout); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
		}
		fmt.Fprintln(w, "restarted", name)
	})
	mux.HandleFunc("POST /compact", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
		defer cancel()
		rev := etcd.Server.KV().Rev()
		if _, err := etcd.Server.Compact(ctx, &pb.CompactionRequest{Revision: rev, Physical: true}); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "compacted", rev)
	})
	listener, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", cp.ports.Control))
	if err != nil {
		return nil, err
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(listener)
	return srv, nil
}
