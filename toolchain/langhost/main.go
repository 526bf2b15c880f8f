// Command pulumi-language-python is pgha's own Python language host for the
// Pulumi engine.
//
// Pulumi's language host lives in a Go module of its own
// (sdk/python/cmd/pulumi-language-python/v3) which the Go module proxy reachable
// here does not serve. This host implements the part of the LanguageRuntime
// protocol that `pulumi preview/up/refresh/destroy/about` need: it runs the
// program through `pulumi-language-python-exec`, the shim shipped in the
// sdk/v3 module at the pinned release, inside the project's virtualenv.
// Everything else answers Unimplemented, which the engine treats as optional.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/pulumi/pulumi/sdk/v3/go/common/util/rpcutil"
	"github.com/pulumi/pulumi/sdk/v3/go/common/version"
	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"
)

// exitCodeUserActionable is what the exec shim returns after it has already
// shown the user an error; the engine must not repeat it.
const exitCodeUserActionable = 32

func main() {
	var engineAddress string
	// The engine passes flags (e.g. -tracing) before its own address, which is last.
	if len(os.Args) > 1 {
		engineAddress = os.Args[len(os.Args)-1]
	}
	execShim, err := findExecShim()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pulumi-language-python:", err)
		os.Exit(1)
	}
	host := &languageHost{engineAddress: engineAddress, execShim: execShim}
	handle, err := rpcutil.ServeWithOptions(rpcutil.ServeOptions{
		Init: func(srv *grpc.Server) error {
			pulumirpc.RegisterLanguageRuntimeServer(srv, host)
			return nil
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "pulumi-language-python: cannot serve:", err)
		os.Exit(1)
	}
	// The engine reads the port from our first line of output.
	fmt.Printf("%d\n", handle.Port)
	if err := <-handle.Done; err != nil {
		fmt.Fprintln(os.Stderr, "pulumi-language-python: stopped:", err)
		os.Exit(1)
	}
}

// findExecShim locates pulumi-language-python-exec beside the real binary,
// as Pulumi's own host does, so a symlinked host still finds it.
func findExecShim() (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	if resolved, err := filepath.EvalSymlinks(self); err == nil {
		self = resolved
	}
	shim := filepath.Join(filepath.Dir(self), "pulumi-language-python-exec")
	if _, err := os.Stat(shim); err != nil {
		return "", fmt.Errorf("%s is missing: run scripts/install-pulumi", shim)
	}
	return shim, nil
}

type languageHost struct {
	pulumirpc.UnimplementedLanguageRuntimeServer
	engineAddress string
	execShim      string
}

// python returns the interpreter to run the program with: the project's
// virtualenv when Pulumi.yaml names one, otherwise python3 from PATH.
func python(info *pulumirpc.ProgramInfo) (string, string, error) {
	venv := ""
	if info != nil && info.GetOptions() != nil {
		if v, ok := info.GetOptions().GetFields()["virtualenv"]; ok {
			venv = v.GetStringValue()
		}
	}
	if venv == "" {
		path, err := exec.LookPath("python3")
		return path, "", err
	}
	if !filepath.IsAbs(venv) {
		venv = filepath.Join(info.GetRootDirectory(), venv)
	}
	interpreter := filepath.Join(venv, "bin", "python")
	if _, err := os.Stat(interpreter); err != nil {
		return "", "", fmt.Errorf(
			"the virtualenv %q named in Pulumi.yaml does not exist: run `make setup`", venv)
	}
	return interpreter, venv, nil
}

func venvEnv(venv string) []string {
	env := os.Environ()
	if venv == "" {
		return env
	}
	out := make([]string, 0, len(env)+2)
	for _, kv := range env {
		if strings.HasPrefix(kv, "PYTHONHOME=") || strings.HasPrefix(kv, "PATH=") ||
			strings.HasPrefix(kv, "VIRTUAL_ENV=") {
			continue
		}
		out = append(out, kv)
	}
	return append(out,
		"VIRTUAL_ENV="+venv,
		"PATH="+filepath.Join(venv, "bin")+string(os.PathListSeparator)+os.Getenv("PATH"))
}

func (h *languageHost) Run(ctx context.Context, req *pulumirpc.RunRequest) (*pulumirpc.RunResponse, error) {
	interpreter, venv, err := python(req.GetInfo())
	if err != nil {
		return &pulumirpc.RunResponse{Error: err.Error()}, nil
	}
	args := []string{"-u", h.execShim}
	add := func(flag, value string) {
		if value != "" {
			args = append(args, "--"+flag, value)
		}
	}
	add("monitor", req.GetMonitorAddress())
	add("engine", h.engineAddress)
	add("project", req.GetProject())
	add("stack", req.GetStack())
	add("pwd", req.GetPwd())
	add("dry_run", strconv.FormatBool(req.GetDryRun()))
	add("parallel", strconv.Itoa(int(req.GetParallel())))
	add("organization", req.GetOrganization())
	if info := req.GetInfo(); info != nil {
		add("root_directory", info.GetRootDirectory())
	}
	program := req.GetProgram() //nolint:staticcheck // still what the engine fills
	if info := req.GetInfo(); info != nil && info.GetEntryPoint() != "" {
		program = info.GetEntryPoint()
	}
	if program == "" {
		program = "."
	}
	args = append(args, program)
	args = append(args, req.GetArgs()...)

	env := venvEnv(venv)
	if cfg := req.GetConfig(); cfg != nil {
		blob, err := json.Marshal(cfg)
		if err != nil {
			return nil, err
		}
		env = append(env, "PULUMI_CONFIG="+string(blob))
	}
	if keys := req.GetConfigSecretKeys(); len(keys) > 0 {
		blob, err := json.Marshal(keys)
		if err != nil {
			return nil, err
		}
		env = append(env, "PULUMI_CONFIG_SECRET_KEYS="+string(blob))
	}

	cmd := exec.CommandContext(ctx, interpreter, args...)
	cmd.Dir = req.GetPwd()
	cmd.Env = env
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		var exitErr *exec.ExitError
		if errors.As(err, &exitErr) {
			if exitErr.ExitCode() == exitCodeUserActionable {
				return &pulumirpc.RunResponse{Bail: true}, nil
			}
			return &pulumirpc.RunResponse{
				Error: fmt.Sprintf("Program exited with non-zero exit code: %d", exitErr.ExitCode()),
			}, nil
		}
		return &pulumirpc.RunResponse{
			Error: fmt.Sprintf("could not run the Python program with %s: %v", interpreter, err),
		}, nil
	}
	return &pulumirpc.RunResponse{}, nil
}

// GetRequiredPackages reports no plugins: plugins are installed ahead of time
// by scripts/install-pulumi, and automatic acquisition is disabled.
func (h *languageHost) GetRequiredPackages(
	context.Context, *pulumirpc.GetRequiredPackagesRequest,
) (*pulumirpc.GetRequiredPackagesResponse, error) {
	return &pulumirpc.GetRequiredPackagesResponse{}, nil
}

func (h *languageHost) GetRequiredPlugins(
	context.Context, *pulumirpc.GetRequiredPluginsRequest,
) (*pulumirpc.GetRequiredPluginsResponse, error) {
	return &pulumirpc.GetRequiredPluginsResponse{}, nil
}

func (h *languageHost) GetPluginInfo(context.Context, *emptypb.Empty) (*pulumirpc.PluginInfo, error) {
	return &pulumirpc.PluginInfo{Version: version.Version}, nil
}

func (h *languageHost) About(ctx context.Context, req *pulumirpc.AboutRequest) (*pulumirpc.AboutResponse, error) {
	interpreter, _, err := python(req.GetInfo())
	if err != nil {
		return nil, err
	}
	out, err := exec.CommandContext(ctx, interpreter, "--version").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("%s --version: %w", interpreter, err)
	}
	return &pulumirpc.AboutResponse{
		Executable: interpreter,
		Version:    strings.TrimSpace(strings.TrimPrefix(string(out), "Python ")),
		Metadata:   map[string]string{"host": "pgha toolchain/langhost"},
	}, nil
}

func (h *languageHost) GetProgramDependencies(
	ctx context.Context, req *pulumirpc.GetProgramDependenciesRequest,
) (*pulumirpc.GetProgramDependenciesResponse, error) {
	interpreter, venv, err := python(req.GetInfo())
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, interpreter, "-m", "pip", "list", "--format=json", "--disable-pip-version-check")
	cmd.Env = venvEnv(venv)
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("pip list: %w", err)
	}
	var packages []struct{ Name, Version string }
	if err := json.Unmarshal(out, &packages); err != nil {
		return nil, fmt.Errorf("pip list output: %w", err)
	}
	resp := &pulumirpc.GetProgramDependenciesResponse{}
	for _, p := range packages {
		resp.Dependencies = append(resp.Dependencies, &pulumirpc.DependencyInfo{Name: p.Name, Version: p.Version})
	}
	return resp, nil
}
