import dagster as dg
import docker

from rp9_pipelines.resources.health import Health, probe


class DockerRuntimeResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The Docker Engine API that runs tenants' stacks."""

    docker_host: str = "unix:///var/run/docker.sock"
    timeout_s: int = 60

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.docker_host, timeout=self.timeout_s)

    def ping(self) -> Health:
        def check() -> str:
            client = self.client()
            try:
                return f"Docker Engine {client.version()['Version']}"
            finally:
                client.close()

        return probe("docker", check)
