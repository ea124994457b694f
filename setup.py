"""setuptools entry point: everything comes from settings.ini (the nbdev 2 way).

Unlike the classic nbdev template this file does not import `pkg_resources`,
which current setuptools no longer ships in isolated builds.
"""
from configparser import ConfigParser
import setuptools
import shlex

assert setuptools.__version__ >= '36.2'

config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

for key in 'version description keywords author author_email'.split():
    assert key in cfg, f'missing expected setting: {key}'

licenses = {
    'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License'),
    'mit': ('MIT License', 'OSI Approved :: MIT License'),
}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature',
            '7 - Inactive']
py_versions = '3.10 3.11 3.12 3.13'.split()

def split_reqs(key): return shlex.split(cfg.get(key, '').replace('\n', ' '))

requirements = split_reqs('requirements')
dev_requirements = split_reqs('dev_requirements')
lic = licenses.get(cfg['license'].lower(), (cfg['license'], None))
min_python = cfg['min_python']

setuptools.setup(
    name=cfg['lib_name'],
    license=lic[0],
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'Natural Language :: ' + cfg['language'].title(),
                 'Topic :: Scientific/Engineering :: Medical Science Apps.',
                 'Topic :: Scientific/Engineering :: Image Recognition']
                + ['Programming Language :: Python :: ' + o for o in py_versions[py_versions.index(min_python):]]
                + (['License :: ' + lic[1]] if lic[1] else []),
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=['spinexr', 'spinexr.*']),
    include_package_data=True,
    package_data={'spinexr': ['templates/*', 'architectures/*.yaml', 'plans/*.yaml']},   # markup, yamls
    install_requires=requirements,
    extras_require={'dev': dev_requirements},
    python_requires='>=' + min_python,
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    zip_safe=False,
    entry_points={
        'console_scripts': cfg.get('console_scripts', '').split(),
        'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
    version=cfg['version'],
    description=cfg['description'],
    keywords=cfg['keywords'],
    author=cfg['author'],
    author_email=cfg['author_email'],
)
