"""
Packaging for twisted_sse.

The twistd dropin lives in ``twisted/plugins`` with no ``__init__.py`` there
(it is a namespace shared with Twisted itself), so ``find_packages()`` cannot
see it: ``twisted.plugins`` is listed explicitly.
"""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="twisted-sse",
    version="0.1.0",
    description="Server-Sent Events for Twisted: streams, a hub, a client, twistd sse",
    long_description=Path(__file__).with_name("README.md").read_text("utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=[
        *find_packages(include=["twisted_sse", "twisted_sse.*"]),
        "twisted.plugins",
    ],
    package_data={"twisted_sse": ["py.typed", "static/*"]},
    include_package_data=True,
    install_requires=[
        "Twisted>=24.7.0",
        "klein>=23.12.0",
        "attrs>=23.1.0",
        "zope.interface>=6.0",
        "prometheus_client>=0.17",
        "hiredis>=3.0",
        # Signed tokens (JWT) for authorization: PyJWT checks signatures and
        # claims, with cryptography for RSA, EC and Ed25519 keys.
        "PyJWT[crypto]>=2.10.1",
        # twistd sse --auth-url asks the application over HTTP.
        "treq>=23.11.0",
    ],
    extras_require={
        "tls": ["Twisted[tls]>=24.7.0"],
        "http2": ["Twisted[http2]>=24.7.0"],
        "docs": ["sphinx>=9.0", "myst-parser>=5.0"],
        "test": [
            "Twisted[tls,http2]>=24.7.0",
            "hypothesis>=6.90",
            "pytest>=8.0",
            "pytest-twisted>=1.14",
            "mypy>=1.10",
            "mypy-zope>=1.0.5",
            "ruff>=0.5",
            # Real SSE clients for tests/test_real_clients.py.
            "httpx>=0.27",
            "httpx-sse>=0.4",
            "sseclient-py>=1.8",
            # tests/test_docs.py builds the documentation (the docs extra).
            "sphinx>=9.0",
            "myst-parser>=5.0",
            # tests/test_docs_blocks.py runs the code blocks of README.md and
            # docs/; redis-py is the other program of docs/deployment.md's
            # example of publishing through Redis.
            "sybil>=9.0",
            "redis>=5.0",
        ],
    },
    entry_points={"console_scripts": ["twisted-sse = twisted_sse.__main__:main"]},
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Framework :: Twisted",
        "Intended Audience :: Developers",
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Topic :: Internet :: WWW/HTTP",
        "Typing :: Typed",
    ],
)
